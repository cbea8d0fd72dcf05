"""Where each block's time goes inside the sampler's CUDA graph, program by program: the Triton
kernel compiled with its probe (``dp_fast.triton.conv_block.probing``), each program reading its
SM's cycle counter at its start, after its wait for the previous launch, after its reductions,
after its arrival at its region's counter and at its end, and the GPU's global timer at its
start and end. ``bench/diag/timeline.py`` sees a kernel from outside (its start and end);
Nsight Compute sees one kernel alone, caches flushed and dependent launches off. This reads the
phases of every program of every block as the graph runs them, one replay after another.

    python bench/diag/probe.py --workload W2-ddim16 [--method triton|cuda-chain] [--dtype fp32] [--replays 5] [--out PATH]

Per block of the network (medians over the evaluations of the replays, microseconds), where
"released" is the first of its programs through its wait, "prev end" the last program's end of
the block before:

- ``handoff``: released minus prev end. The previous grid's completion, its memory flush and
  the dependent launch's release, plus the loads nothing overlaps at the start of a block.
- ``work``: the last program's arrival (or, holding its whole region, the end of its
  reductions) minus released: the loops, their sum, the partial sums' store and the arrival,
  as long as the slowest program takes them, after the first one is let through.
- ``tail``: the block's last end minus the last arrival: the last program's finish (the partial
  sums' reload, the epilogue, the store) where a region is split; the epilogue where not.
- ``total``: handoff + work + tail, the block's share of an evaluation: summed over the blocks,
  an evaluation (the ``replay`` line says what the graph took by CUDA events).

And, to read them by: ``early`` (released minus the first program's start: how long before its
wait ended a program had started, the dependent launch's head start), ``skew`` (the last
program's release minus the first's: programs that could not start until others left their
SM), ``loop`` and ``loop max`` (a program's reductions, after its wait: its median and its
slowest), ``post`` (a split program's partial sums' store and arrival, median), ``progs`` and
``SMs``.

A program's phases are its cycle counter's, set on the global timer by its start and end (the
mean of the two offsets); the counter's rate is taken from the programs themselves (their
cycles over their global-timer spans, the long ones). The global timer's step on this GPU is
printed: coarse steps (a microsecond on some GPUs, finer while a profiler is attached, which is
why the replays run under ``torch.profiler`` by default) blur ``handoff`` and the block edges,
not the per-program phases. The probe costs each program a few instructions and one row of
stores (sm_90, Triton 3.6, ``bench/diag/triton_sass.py --probe``: 7-16 more registers, the same
main loop). GPU only. The finish launch of DP_FAST_WIDE_FINISH=kernel is not probed: its time falls into the
next block's handoff.

``--method cuda-chain`` reads the CUDA backend's loop run as one cooperative launch (the chain,
``dp_fast.cuda.conv_block.probing``; ``DP_FAST_CUDA_CHAIN``'s path, W1's road to its 15 us):
thread 0 of every CTA reads the clocks at each entry's start, after its tiles, after its
arrival at the grid barrier and at its release. Per block (chain_summarize): ``work`` from the
entry before's release to the slowest CTA's last tile, ``barrier`` from the last arrival to
the first release, ``total`` to the last release, and ``work med`` (a CTA's tiles), ``arrive``,
``skew`` (the releases apart) and ``idle`` (CTAs without a tile in that block).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from timeline import emit, median_summary as median_of, network_blocks  # noqa: E402

# the probe rows' columns (dp_fast.triton.conv_block.PROBE_FIELDS; the chain's,
# dp_fast.cuda.conv_block.CHAIN_PROBE_FIELDS, share the first three and the last): the global
# timer at the start and the end, the cycle counter at each phase, the SM and role
GT_START, GT_END, CK_START, CK_WAITED, CK_REDUCED, CK_ARRIVED, CK_END, INFO = range(8)
CLOCKS = [CK_START, CK_WAITED, CK_REDUCED, CK_ARRIVED, CK_END]  # a Triton program's phases
CHAIN_CLOCKS = [2, 3, 4, 5]  # a chain CTA's, per entry: start, worked, arrived, released
ROLE_SPLIT, ROLE_LAST, ROLE_WHOLE = 0, 1, 2  # dp_fast.triton.conv_block.PROBE_SPLIT, ...
COLUMNS = ("handoff", "work", "tail", "total", "early", "skew", "loop", "loop_max", "post")
CHAIN_COLUMNS = ("work", "barrier", "total", "work_med", "arrive", "skew", "idle")


def check_rows(rows: np.ndarray, clocks: list[int] = CLOCKS) -> None:
    """Every program (chain: CTA) wrote its row (the rows are poisoned with -1 before a replay)
    and its phases are in order."""
    if rows.ndim != 2 or rows.shape[1] != 8:
        raise ValueError(f"probe rows must be (programs, 8), got {rows.shape}")
    unwritten = np.flatnonzero((rows == -1).any(axis=1))
    if unwritten.size:
        raise ValueError(f"{unwritten.size} of {len(rows)} programs left their probe row unwritten (first: {unwritten[0]})")
    cycles = rows[:, clocks]
    if (np.diff(cycles, axis=1) < 0).any() or (rows[:, GT_END] < rows[:, GT_START]).any():
        raise ValueError("a program's probe phases are out of order")


def cycles_per_ns(launches: list[np.ndarray], min_span_ns: float = 4000.0, clocks: list[int] = CLOCKS) -> float:
    """The cycle counters' rate: the programs' cycles over their global-timer spans, summed over
    the programs whose span is at least min_span_ns (all of them where none is)."""
    rows = np.concatenate(launches)
    spans = (rows[:, GT_END] - rows[:, GT_START]).astype(np.float64)
    cycles = (rows[:, clocks[-1]] - rows[:, clocks[0]]).astype(np.float64)
    long = spans >= min_span_ns
    if not long.any():
        long = spans > 0
    if not long.any():
        raise ValueError("no program spans a step of the global timer: its rate cannot be measured")
    return float(cycles[long].sum() / spans[long].sum())


def timer_step_ns(launches: list[np.ndarray]) -> float:
    """The global timer's smallest step seen: the least positive difference between the sorted
    distinct readings (its resolution, or coarser)."""
    values = np.unique(np.concatenate([r[:, [GT_START, GT_END]].ravel() for r in launches]))
    steps = np.diff(values)
    return float(steps.min()) if steps.size else float("nan")


def phase_times(rows: np.ndarray, rate: float, clocks: list[int] = CLOCKS) -> np.ndarray:
    """(programs, phases) times in ns on the global timer: each program's cycle counter at
    `clocks` placed by the mean of its start's and its end's offsets."""
    cycles = rows[:, clocks].astype(np.float64)
    rel = (cycles - cycles[:, :1]) / rate
    offset = (rows[:, GT_START] + (rows[:, GT_END] - rel[:, -1])) / 2.0
    return offset[:, None] + rel


def launch_metrics(rows: np.ndarray, rate: float, prev_end: float | None) -> tuple[dict, float]:
    """One launch's numbers in us (module docstring), with its last end (ns) for the next."""
    t = phase_times(rows, rate)
    start, waited, reduced, arrived, end = (t[:, i] for i in range(5))
    role = rows[:, INFO] & 3
    released = waited.min()
    last_arrival = arrived.max()
    split = role != ROLE_WHOLE
    m = dict(
        handoff=(released - prev_end) / 1e3 if prev_end is not None else float("nan"),
        work=(last_arrival - released) / 1e3,
        tail=(end.max() - last_arrival) / 1e3,
        early=(released - start.min()) / 1e3,
        skew=(waited.max() - released) / 1e3,
        loop=float(np.median(reduced - waited)) / 1e3,
        loop_max=float((reduced - waited).max()) / 1e3,
        post=float(np.median((arrived - reduced)[split])) / 1e3 if split.any() else 0.0,
        programs=len(rows),
        sms=len(np.unique(rows[:, INFO] >> 2)),
    )
    m["total"] = m["handoff"] + m["work"] + m["tail"] if prev_end is not None else float("nan")
    return m, float(end.max())


def summarize(launches: list[np.ndarray], blocks_per_eval: int, rate: float | None = None) -> dict:
    """Per block of the network, the medians over the evaluations of launch_metrics, for one
    replay's launches in launch order (a whole number of evaluations)."""
    if not launches or len(launches) % blocks_per_eval:
        raise ValueError(f"{len(launches)} probed launches is not a whole number of evaluations of {blocks_per_eval} blocks")
    for rows in launches:
        check_rows(rows)
    rate = rate or cycles_per_ns(launches)
    metrics, prev_end = [], None
    for rows in launches:
        m, prev_end = launch_metrics(rows, rate, prev_end)
        metrics.append(m)
    evaluations = len(launches) // blocks_per_eval
    out = dict(evaluations=evaluations, cycles_per_ns=rate, timer_step_ns=timer_step_ns(launches), rows=[])
    for i in range(blocks_per_eval):
        ms = metrics[i::blocks_per_eval]
        row = dict(block=i, programs=ms[0]["programs"], sms=max(m["sms"] for m in ms))
        for k in COLUMNS:
            values = [m[k] for m in ms if not np.isnan(m[k])]
            row[k] = statistics.median(values) if values else float("nan")
        out["rows"].append(row)
    return out


def chain_entries(rows: np.ndarray, entries: int) -> list[np.ndarray]:
    """A chain probe's rows (entries x grid, 8; dp_fast.cuda.conv_block.ChainProbe) as one
    (CTAs, 8) array per entry, of the CTAs the launch ran: its gridDim (in every row's info;
    a launch may run fewer CTAs than the grid it was asked for), entry by entry."""
    if rows.ndim != 2 or rows.shape[1] != 8 or entries < 1 or rows.shape[0] % entries:
        raise ValueError(f"chain probe rows must be (entries x grid, 8) for {entries} entries, got {rows.shape}")
    ran = int(rows[0, INFO]) >> 32 if rows[0, INFO] != -1 else 0
    if not 1 <= ran <= rows.shape[0] // entries:
        raise ValueError(f"the chain's first CTA did not write a valid row (grid {ran} of {rows.shape[0] // entries})")
    out = [rows[i * ran:(i + 1) * ran] for i in range(entries)]
    for entry in out:
        check_rows(entry, CHAIN_CLOCKS)
    return out


def chain_entry_metrics(rows: np.ndarray, rate: float, prev_release: float | None, last: bool) -> tuple[dict, float]:
    """One chain entry's numbers in us (CHAIN_COLUMNS), with its last release (ns) for the next."""
    t = phase_times(rows, rate, CHAIN_CLOCKS)
    start, worked, arrived, released = (t[:, i] for i in range(4))
    tiles = rows[:, INFO] & 0x7FFFFFFF
    busy = tiles > 0
    origin = prev_release if prev_release is not None else start.min()
    m = dict(
        work=(worked.max() - origin) / 1e3,
        barrier=float("nan") if last else (released.min() - arrived.max()) / 1e3,
        total=(released.max() - origin) / 1e3,
        work_med=float(np.median((worked - start)[busy])) / 1e3 if busy.any() else 0.0,
        arrive=float(np.median(arrived - worked)) / 1e3,
        skew=float("nan") if last else (released.max() - released.min()) / 1e3,
        idle=int((~busy).sum()),
    )
    return m, float(released.max())


def chain_summarize(rows: np.ndarray, entries: int, blocks_per_eval: int, rate: float | None = None) -> dict:
    """Per block of the network, the medians over the evaluations of chain_entry_metrics, for
    one launch's probe (a whole number of evaluations of entries): an entry's ``work`` from the
    release of the entry before (the first: from its first CTA's start) to its slowest CTA's
    last tile, its ``barrier`` from the last CTA's arrival to the first CTA's release, its
    ``total`` to its last CTA's release; ``work_med`` a CTA's tiles (median over the CTAs with
    any), ``arrive`` a CTA's arrival (median), ``skew`` its CTAs' releases apart, ``idle`` its
    CTAs without a tile."""
    entries = chain_entries(rows, entries)
    if len(entries) % blocks_per_eval:
        raise ValueError(f"{len(entries)} chain entries is not a whole number of evaluations of {blocks_per_eval} blocks")
    rate = rate or cycles_per_ns(entries, clocks=CHAIN_CLOCKS)
    metrics, prev = [], None
    for i, entry in enumerate(entries):
        m, prev = chain_entry_metrics(entry, rate, prev, i == len(entries) - 1)
        metrics.append(m)
    out = dict(evaluations=len(entries) // blocks_per_eval, cycles_per_ns=rate, timer_step_ns=timer_step_ns(entries),
               ctas=len(entries[0]), rows=[])
    for i in range(blocks_per_eval):
        ms = metrics[i::blocks_per_eval]
        row = dict(block=i)
        for k in CHAIN_COLUMNS:
            values = [m[k] for m in ms if not np.isnan(m[k])]
            row[k] = statistics.median(values) if values else float("nan")
        out["rows"].append(row)
    return out


def format_report(rep: dict, program_rows: list[dict]) -> str:
    s = rep["summary"]
    chain = rep["method"] == "cuda-chain"
    lines = [f"{rep['workload']} {rep['method']} {rep['dtype']} on {rep['device']} (torch {rep['torch']}, Triton {rep['triton']}), "
             f"probed: median of {rep['replays']} graph replays, {s['evaluations']} evaluations each"
             + (f", {s['ctas']:.0f} CTAs" if chain else "") + f"; settings: {rep['settings']}",
             f"global timer step {s['timer_step_ns']:.0f} ns, SM clock {s['cycles_per_ns']:.3f} GHz (from the probes); "
             f"replay {rep['replay_us_per_eval']:.1f} us per evaluation by CUDA events (probed)"]
    columns = CHAIN_COLUMNS if chain else COLUMNS
    head = f"{'#':>3} {'mode':>4} {'c_in':>5} {'c_out':>5} {'k':>2} {'gn':>3}" + ("" if chain else f" {'progs':>5} {'SMs':>4}")
    lines.append(head + "".join(f" {c.replace('_', ' '):>8}" for c in columns))
    for r, p in zip(s["rows"], program_rows):
        lines.append(f"{r['block']:>3} {p['mode']:>4} {p['c_in']:>5} {p['c_out']:>5} {p['k']:>2} {'y' if p['gn'] else '-':>3}"
                     + ("" if chain else f" {r['programs']:>5} {r['sms']:>4}") + "".join(f" {r[c]:8.2f}" for c in columns))
    summed = ("work", "barrier", "total") if chain else ("handoff", "work", "tail", "total")
    sums = {c: sum(r[c] for r in s["rows"] if not np.isnan(r[c])) for c in summed}
    lines.append("per evaluation: " + ", ".join(f"{c} {v:.1f} us" for c, v in sums.items())
                 + (" (the loop's last entry has no barrier)" if chain else
                    " (block 0's handoff: from the evaluation before; none for the first)"))
    return "\n".join(lines)


def probe(workload: str, method: str, dtype_name: str, replays: int, profiler: bool) -> tuple[dict, list[dict]]:
    """The sampler's graph for `method` (triton, or cuda-chain: the CUDA backend's loop as one
    chain launch), captured with its probes and replayed: (report, the network's blocks)."""
    import importlib

    import torch
    import triton

    from dp_fast.benchmark import DTYPES, WORKLOADS, captured_graphs, knob_settings, make_method, replay_ms

    probed = importlib.import_module("dp_fast.cuda.conv_block" if method == "cuda-chain" else "dp_fast.triton.conv_block")
    device = torch.device("cuda")
    w = WORKLOADS[workload]
    policy = w.build_policy(device, DTYPES[dtype_name])
    obs, noise = w.inputs(policy)
    program_rows = network_blocks(policy)
    blocks_per_eval = len(program_rows)
    fn = make_method(method, policy, obs, noise, w.n_steps, "max-autotune-no-cudagraphs")
    with probed.probing() as records:
        fn()  # captures the graph with its probes
    if method == "cuda-chain":
        if not records:
            raise SystemExit("the CUDA backend ran no chain (a block it does not take: T_out > 16?)")
        buffers, entries = [records[-1].rows], len(records[-1].configs)  # the capture's chain
        read = lambda: chain_summarize(buffers[0].cpu().numpy(), entries, blocks_per_eval)  # noqa: E731
    else:
        launches = [r for r in records if r.captured]
        if len(launches) != blocks_per_eval * w.n_steps:
            raise SystemExit(f"captured {len(launches)} probed launches, expected {blocks_per_eval} blocks x {w.n_steps} steps")
        buffers = [r.rows for r in launches]
        read = lambda: summarize([b.cpu().numpy() for b in buffers], blocks_per_eval)  # noqa: E731
    (graph,) = captured_graphs(policy)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    summaries = []
    for _ in range(replays):
        for b in buffers:
            b.fill_(-1)  # poison: an unwritten row fails check_rows
        torch.cuda.synchronize()
        if profiler:  # CUPTI attached: a finer global timer on some GPUs
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]):
                graph.replay()
                torch.cuda.synchronize()
        else:
            graph.replay()
            torch.cuda.synchronize()
        summaries.append(read())
    replay_us = replay_ms(graph, device) * 1e3 / w.n_steps
    rep = dict(workload=workload, method=method, dtype=dtype_name, device=torch.cuda.get_device_name(), torch=torch.__version__,
               triton=triton.__version__, settings=knob_settings(), replays=replays, replay_us_per_eval=replay_us,
               summary=median_of(summaries))
    return rep, program_rows


def main() -> int:
    from dp_fast.benchmark import DTYPES, WORKLOADS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="W2-ddim16", choices=list(WORKLOADS))
    parser.add_argument("--method", default="triton", choices=["triton", "cuda-chain"],
                        help="the Triton blocks, or the CUDA backend's loop as one chain launch")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--replays", type=int, default=5, help="probed replays of the graph (medians over them)")
    parser.add_argument("--profiler", action=argparse.BooleanOptionalAction, default=True,
                        help="replay under torch.profiler (CUPTI attached: a finer global timer on some GPUs)")
    parser.add_argument("--out", default=None, help="JSON path")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench/diag/probe.py needs a CUDA GPU")
    rep, program_rows = probe(args.workload, args.method, args.dtype, max(args.replays, 1), args.profiler)
    emit(format_report(rep, program_rows), rep, program_rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
