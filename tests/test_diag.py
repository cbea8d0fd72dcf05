"""The diagnostics under bench/diag/ whose numbers the docs quote: their arithmetic, on the CPU."""

import argparse
import json
import importlib.util
import os

import pytest
import torch
from diag_scripts import ROOT, load as load_diag


def test_tf32_rounding_keeps_ten_mantissa_bits_to_nearest_ties_away():
    to_tf32 = load_diag("tf32x3_accuracy").to_tf32
    ulp = 2.0 ** -10  # of TF32 at 1.0
    x = torch.tensor([1 + ulp / 4, 1 + ulp / 2, 1 + 3 * ulp / 4, -(1 + ulp / 2), 3.0, 0.0])
    assert to_tf32(x).tolist() == [1.0, 1 + ulp, 1 + ulp, -(1 + ulp), 3.0, 0.0]
    a = torch.randn(4096)
    hi = to_tf32(a)
    lo = to_tf32(a - hi)
    assert ((hi - a).abs() <= a.abs() * 2.0 ** -11).all()  # half an ulp of 10 bits
    assert ((hi.double() + lo.double() - a.double()).abs() <= a.abs().double() * 2.0 ** -21).all()  # the split: about 21 bits


def _trace(events):
    return {"traceEvents": [{"cat": cat, "name": name, "ts": ts, "dur": dur} for cat, name, ts, dur in events]
            + [{"cat": "cpu_op", "name": "aten::copy_", "ts": 0.0, "dur": 500.0}, {"ph": "M", "name": "process_name"}]}


def test_timeline_groups_a_calls_kernels_into_blocks_per_evaluation():
    """bench/diag/timeline.py's reading of a profiled sample(): the hoisted conditioning before
    the first block, a block's im2col and finish launch with its block, start-to-start intervals
    and overlaps (a dependent launch starts before the previous block ends), medians over
    evaluations."""
    tl = load_diag("timeline")
    k = "void dp_fast::(anonymous namespace)::conv_block_kernel<float, 16, false>(dp_fast::ConvBlockParams)"
    events = [("gpu_memcpy", "Memcpy HtoD", 0.0, 2.0), ("kernel", "ampere_sgemm", 3.0, 4.0)]
    # two evaluations of three blocks; block 1 has an im2col in front and a finish launch after
    # it that ends last; block 2 overlaps block 1's end
    for e, t0 in enumerate((20.0, 60.0)):
        events += [("kernel", k, t0, 5.0 + e), ("kernel", "_im2col_kernel", t0 + 8.0, 2.0), ("kernel", "_conv_block_kernel", t0 + 10.0, 10.0),
                   ("kernel", "_conv_block_finish_kernel", t0 + 17.0, 3.5), ("kernel", k, t0 + 18.0, 6.0)]
    events.append(("gpu_memcpy", "Memcpy DtoD", 100.0, 1.0))
    parsed = tl.device_events(_trace(events))
    assert [e[1] for e in parsed] == sorted(e[1] for e in parsed) and len(parsed) == len(events)
    s = tl.summarize(parsed, 3)
    assert s["blocks"] == 6 and s["evaluations"] == 2 and s["kernels"] == len(events)
    assert s["before_us"] == 6.0 and s["after_us"] == 1.0 and s["span_us"] == 101.0 and s["chain_us"] == 0.0
    assert s["blocks_us"] == 84.0 - 20.0 and s["blocks_us_per_eval"] == 32.0
    b0, b1, b2 = s["rows"]
    assert b0 == dict(block=0, kernel_us=5.5, interval_us=8.0, gap_us=2.5)  # 5 and 6 us long, next starts at +8
    assert b1 == dict(block=1, kernel_us=12.5, interval_us=10.0, gap_us=-2.5)  # im2col + block + finish; block 2 starts 2.5 us early
    # block 2 of the first evaluation: 6 us, next at +22 (gap 16); of the last: no next, interval = its length
    assert b2 == dict(block=2, kernel_us=6.0, interval_us=14.0, gap_us=16.0)
    rows = [dict(mode="same", c_in=4, c_out=8, k=3, gn=False)] * 3
    rep = dict(workload="W1", method="triton", dtype="fp32", device="test", torch="x", calls=2,
               summary=tl.median_summary([s, s]))
    text = tl.format_report(rep, rows)
    assert "32.0 us per evaluation" in text and " -2.50" in text


def test_timeline_reports_a_chain_whole_and_rejects_partial_evaluations():
    tl = load_diag("timeline")
    chain = [("kernel", "void dp_fast::(anonymous namespace)::conv_block_chain_kernel<float>(...)", 10.0, 700.0)]
    s = tl.summarize(tl.device_events(_trace(chain)), 8)
    assert s["rows"] == [] and s["blocks"] == 0 and s["chain_us"] == 700.0
    blocks = [("kernel", "_conv_block_kernel", 10.0 * i, 5.0) for i in range(5)]
    with pytest.raises(ValueError, match="5 block kernels is not a whole number of evaluations of 2 blocks"):
        tl.summarize(tl.device_events(_trace(blocks)), 2)


def test_l1_prefetch_chase_visits_every_line_once_and_verdicts_read_the_cycles():
    lp = load_diag("l1_prefetch")
    buf = lp.chase_buffer(16, 3, torch.Generator().manual_seed(1))
    assert buf.shape == (3, 16, lp.LINE_INTS)
    for region in buf:
        seen = lp.follow(region)
        assert sorted(seen) == list(range(16)) and seen[-1] == 0  # a cycle through all, back to the start
        assert (region[:, 1:] == 0).all()  # one int a line
    works = {"l2": 600.0, "miss": 620.0, "hit": 40.0, "prefetch": 45.0, "hit-acquire": 610.0, "nc-acquire": 42.0}
    said = lp.verdict(works)
    assert said[0].startswith("prefetch.global.L1 brings") and "empties L1" in said[1] and "survive an" in said[2]
    dropped = works | {"prefetch": 590.0, "hit-acquire": 45.0, "nc-acquire": 600.0}
    said = lp.verdict(dropped)
    assert "does not bring" in said[0] and "leaves L1" in said[1] and "do not survive" in said[2]


def _triton_cuda_tools() -> bool:
    """Whether Triton's CUDA backend tools (ptxas, cuobjdump) are installed: compiling for sm_90 needs them."""
    spec = importlib.util.find_spec("triton")
    tools = os.path.join(os.path.dirname(spec.origin), "backends", "nvidia", "bin") if spec else ""
    return bool(spec) and all(os.path.exists(os.path.join(tools, t)) for t in ("ptxas", "cuobjdump"))


@pytest.mark.skipif(not _triton_cuda_tools(), reason="Triton's CUDA backend tools are not installed")
def test_l1_prefetch_compiles_for_sm90_with_each_mode_in_place():
    """The diagnostic's kernel compiled for sm_90 (in a subprocess: this one may run Triton's
    interpreter): each mode's instructions are there, the preparation before the wait and the
    acquire after it (the compiler once moved read-only loads past the acquire)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "diag", "l1_prefetch.py"), "--compile-only",
                          "--lines", "8"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {}
    for line in run.stdout.splitlines():
        mode, *fields = line.split()
        rows[mode] = {k: int(v) for k, v in zip(fields[::2], fields[1::2])}
    assert set(rows) == {"l2", "miss", "hit", "prefetch", "hit-acquire", "nc-acquire"}, run.stdout
    assert rows["l2"]["LDG.E.STRONG.GPU"] == 8 + 1  # the chase and the start, through L2
    assert rows["prefetch"]["CCTL.E.PF1"] == 8
    assert {m: r["before_wait"] for m, r in rows.items()} == {"l2": 0, "miss": 0, "hit": 8, "prefetch": 8, "hit-acquire": 8,
                                                               "nc-acquire": 8}, run.stdout
    assert rows["nc-acquire"]["LDG.E.CONSTANT"] == 16
    for m, r in rows.items():
        acquire = m.endswith("acquire")
        assert (r["LD.E.STRONG.GPU"], r["CCTL.IVALL"], r["acquire_after_wait"]) == ((1, 1, 1) if acquire else (0, 0, 0)), (m, r)
        assert r["CS2R"] >= 3, (m, r)  # the wait's clock and the chase's two


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_stream_reads_every_weight_once_in_either_order(dtype, monkeypatch):
    """bench/diag/weight_stream.py's two ways of reading a matrix (the fused kernels' tiles, and
    the same tiles packed contiguously) give every program the sum of exactly its weights:
    under the Triton interpreter, on random values, against torch's sums of the same tiles."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    ws = load_diag("weight_stream")
    rows, chunk, splits = 4, 8, 3
    w = torch.randn(12, 2 * splits * chunk, generator=torch.Generator().manual_seed(3)).to(dtype)
    expected = w.float().reshape(3, rows, splits, 2 * chunk).sum(dim=(1, 3))
    tiles = ws.stream(w, tuple(w.shape), "tiles", rows, chunk, splits, out=torch.full((3, splits), float("nan")))
    packed = ws.pack(w, rows, chunk, splits)
    assert packed.shape == (w.numel(),) and not torch.equal(packed, w.reshape(-1))  # another order, every value
    assert torch.equal(packed.sort().values, w.reshape(-1).sort().values)
    got = ws.stream(packed, tuple(w.shape), "packed", rows, chunk, splits, out=torch.full((3, splits), float("nan")))
    torch.testing.assert_close(tiles, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="does not split"):
        ws.stream(w, (12, 40), "tiles", rows, chunk, splits)
    with pytest.raises(ValueError, match="pattern must be one of"):
        ws.stream(w, tuple(w.shape), "rows", rows, chunk, splits)
    assert ws._shape("512x10240/16") == (512, 10240, 16)
    with pytest.raises(argparse.ArgumentTypeError, match="C_OUTxR/SPLITS"):
        ws._shape("1024x5120")


def _probe_row(start_ns, phases_ns, role, sm, rate=2.0, clock0=10_000):
    """A probe row (dp_fast.triton.conv_block.PROBE_FIELDS) of a program that started at
    start_ns on the global timer and reached its waited, reduced, arrived and end phases
    phases_ns after, on an SM clock of `rate` cycles a ns that read clock0 at its start."""
    cycles = [clock0] + [clock0 + round(rate * p) for p in phases_ns]
    return [start_ns, start_ns + phases_ns[-1], *cycles, sm * 4 + role]


def test_probe_splits_each_block_into_handoff_work_and_tail():
    """bench/diag/probe.py's arithmetic on probe rows made by hand: two evaluations of two
    blocks, the first block split over two programs (one finishes), the second one program
    holding its whole region; the global timer exact, the SM clock at 2 cycles a ns."""
    np = pytest.importorskip("numpy")
    probe = load_diag("probe")
    split, last, whole = probe.ROLE_SPLIT, probe.ROLE_LAST, probe.ROLE_WHOLE
    launches, t = [], 0
    for _ in range(2):
        # block 0: programs start at t and t + 200 (early), are released at t + 1000 and t + 1400,
        # reduce for 3000 and 3400 ns, arrive 500 ns later; the last one finishes in 800 ns
        launches.append(np.array([
            _probe_row(t, [1000, 4000, 4500, 4500], split, sm=0),
            _probe_row(t + 200, [1200, 4600, 5100, 5900], last, sm=1),
        ], dtype=np.int64))
        end0 = t + 200 + 5900
        # block 1: one program, started during block 0, released 1500 ns after block 0's end
        launches.append(np.array([_probe_row(end0 - 1000, [2500, 4500, 4500, 5100], whole, sm=2, clock0=7)], dtype=np.int64))
        t = end0 - 1000 + 5100 + 700  # the next evaluation's block 0 released 700 + 1000 ns after it
    rate = probe.cycles_per_ns(launches)
    assert rate == pytest.approx(2.0, rel=1e-3)
    s = probe.summarize(launches, blocks_per_eval=2)
    assert s["evaluations"] == 2 and s["cycles_per_ns"] == pytest.approx(2.0, rel=1e-3)
    b0, b1 = s["rows"]
    # block 0: its first evaluation has no block before it: the median is the second's
    assert b0["handoff"] == pytest.approx(1.7) and b0["early"] == pytest.approx(1.0) and b0["skew"] == pytest.approx(0.4)
    assert b0["work"] == pytest.approx((200 + 5100 - 1000) / 1e3) and b0["tail"] == pytest.approx(0.8)
    assert b0["loop"] == pytest.approx(3.2) and b0["loop_max"] == pytest.approx(3.4) and b0["post"] == pytest.approx(0.5)
    assert b0["total"] == pytest.approx(1.7 + 4.3 + 0.8) and (b0["programs"], b0["sms"]) == (2, 2)
    assert b1["handoff"] == pytest.approx(1.5) and b1["work"] == pytest.approx(2.0) and b1["tail"] == pytest.approx(0.6)
    assert b1["post"] == 0.0 and b1["early"] == pytest.approx(2.5) and b1["total"] == pytest.approx(4.1)
    assert s["timer_step_ns"] > 0
    # the report's per-evaluation sums
    rep = dict(workload="W0", method="triton", dtype="fp32", device="cpu", torch="-", triton="-", settings="-", replays=1,
               replay_us_per_eval=10.0, summary=probe.median_of([s, s]))
    text = probe.format_report(rep, [dict(mode="same", c_in=4, c_out=8, k=3, gn=True)] * 2)
    assert "total 10.9 us" in text, text


def test_probe_rejects_unwritten_and_disordered_rows():
    np = pytest.importorskip("numpy")
    probe = load_diag("probe")
    good = np.array([_probe_row(0, [100, 200, 300, 400], probe.ROLE_WHOLE, sm=0)], dtype=np.int64)
    probe.check_rows(good)
    with pytest.raises(ValueError, match="unwritten"):
        probe.check_rows(np.concatenate([good, np.full((1, 8), -1, dtype=np.int64)]))
    bad = good.copy()
    bad[0, probe.CK_REDUCED] = bad[0, probe.CK_WAITED] - 1
    with pytest.raises(ValueError, match="out of order"):
        probe.check_rows(bad)
    with pytest.raises(ValueError, match="whole number of evaluations"):
        probe.summarize([good] * 3, blocks_per_eval=2)


def test_host_times_sample_with_its_loop_stubbed_and_puts_the_loop_back(tmp_path):
    """bench/diag/host.py, whose figures bench/results/README.md quotes: a row per workload with
    both timings, the JSON beside them, and the sampler's loop restored afterwards."""
    pytest.importorskip("triton")
    from dp_fast._fastpath import FastSampler

    loop = FastSampler._loop
    out = tmp_path / "host.json"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = load_diag("host").main(["--workloads", "W1", "--number", "2", "--repeat", "1", "--device", device, "--json", str(out)])
    assert FastSampler._loop is loop
    assert [r["workload"] for r in rows] == ["W1"] and rows[0]["us_noise_given"] > 0 and rows[0]["us_noise_drawn"] > 0
    assert json.loads(out.read_text()) == rows
