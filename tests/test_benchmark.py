"""The benchmark harness on a CPU: SPEC.md's workload table, the JSON it writes, GPU-only peers
reported as skipped, new backends picked up by themselves, and clear errors for bad options."""

import json

import pytest
import torch

from dp_fast import _sampler, benchmark
from dp_fast.models import LessonUNet1D

# (weight bytes in fp32, parameter tensors, network evaluations per sample()); SPEC.md's
# "Both have 148 tensors" and W2's 263.13 MB pin Chi's networks.
EXPECTED = {
    "W1": (7_516_188, 23, 10),
    "W2-ddim16": (263_133_192, 148, 16),
    "W2-ddpm100": (263_133_192, 148, 100),
    "W3": (1_006_047_752, 148, 16),
    "W4": (263_133_192, 148, 16),
    "W5": (1_006_047_752, 148, 100),
}
EXPECTED_SHAPES = {"W1": (1, 16), "W2-ddim16": (1, 16), "W2-ddpm100": (1, 16), "W3": (1, 16), "W4": (64, 16), "W5": (1, 64)}
GPU_ONLY = ["reference+graph", "compile+graph"]
TINY_ARGS = ["--device", "cpu", "--workloads", "tiny", "--warmup", "0", "--repeats", "2"]


@pytest.fixture
def tiny_workload(monkeypatch):
    """A lesson U-Net small enough to sample in milliseconds, registered as workload "tiny"."""
    tiny = benchmark.Workload(
        "tiny", "lesson U-Net h16", lambda: LessonUNet1D(2, 3, 16, 100), 1, 2, 8,
        "lesson-ddim", benchmark._lesson_ddim, 5, True,
    )
    monkeypatch.setitem(benchmark.WORKLOADS, "tiny", tiny)
    return tiny


def test_workload_table_is_spec_md():
    assert list(benchmark.WORKLOADS) == list(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_workload_builds_the_spec_network(name):
    workload = benchmark.WORKLOADS[name]
    policy = workload.build_policy("meta", torch.float32)  # shapes only: no memory, no init time
    n_bytes, n_tensors = benchmark.weight_bytes(policy.model)
    assert (n_bytes, n_tensors, workload.evaluations()) == EXPECTED[name]
    assert (workload.batch, workload.horizon) == EXPECTED_SHAPES[name]
    assert policy.chunk_size == workload.horizon


def test_w2_weights_are_263_mb_and_halve_in_bf16():
    policy = benchmark.WORKLOADS["W2-ddim16"].build_policy("meta", torch.bfloat16)
    n_bytes, _ = benchmark.weight_bytes(policy.model)
    assert round(2 * n_bytes / benchmark.MB, 2) == 263.13


def test_quick_run_writes_json_with_a_row_per_workload_and_method(tiny_workload, tmp_path, capsys):
    out = tmp_path / "result.json"
    methods = ["reference", *GPU_ONLY]
    assert benchmark.main([*TINY_ARGS, "--methods", ",".join(methods), "--out", str(out)]) == 0

    report = json.loads(out.read_text())
    for key in ("date", "device", "torch_version", "cuda_version", "dp_fast_version", "git_commit", "bandwidth_gb_per_s", "workloads", "rows"):
        assert key in report
    assert report["device"]["type"] == "cpu" and report["bandwidth_gb_per_s"] > 0
    assert [(r["workload"], r["method"]) for r in report["rows"]] == [("tiny", m) for m in methods]

    ref = report["rows"][0]
    assert ref["status"] == "ok" and ref["repeats"] == 2 and ref["median_ms"] > 0
    assert ref["us_per_eval"] == pytest.approx(ref["median_ms"] * 1e3 / 4)  # n_steps 5: 4 evaluations
    assert ref["speedup_vs_strongest_peer"] == pytest.approx(1.0)
    summary = report["workloads"][0]
    floor_us = summary["weight_bytes"] / (report["bandwidth_gb_per_s"] * 1e9) * 1e6
    assert summary["floor_us_per_eval"] == pytest.approx(floor_us)
    assert ref["times_floor"] == pytest.approx(ref["us_per_eval"] / floor_us)
    assert summary["strongest_peer"] == "reference"

    table = capsys.readouterr().out
    assert "tiny" in table and "reference" in table and str(out) in table


def test_gpu_only_peers_are_skipped_on_cpu(tiny_workload, tmp_path):
    out = tmp_path / "result.json"
    benchmark.main([*TINY_ARGS, "--methods", ",".join(GPU_ONLY), "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["method"], r["status"], r["note"]) for r in rows] == [(m, "skipped", "needs a CUDA GPU") for m in GPU_ONLY]


def test_every_available_backend_gets_a_row(tiny_workload, tmp_path, monkeypatch):
    calls = []

    def fake_cuda(policy, cond, x, n_steps, generator):
        calls.append(n_steps)
        return _sampler.reference_loop(policy, cond, x, n_steps, generator)

    def broken_triton(policy, cond, x, n_steps, generator):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(_sampler, "_RUNNERS", {"reference": _sampler.reference_loop, "triton": broken_triton, "cuda": fake_cuda})
    out = tmp_path / "result.json"
    assert benchmark.main([*TINY_ARGS, "--out", str(out)]) == 1  # a failing method fails the run

    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["reference", *GPU_ONLY, "triton", "cuda"]
    assert rows["cuda"]["kind"] == "backend" and rows["cuda"]["status"] == "ok" and calls
    assert rows["cuda"]["max_abs_diff_vs_reference"] == 0.0  # same loop, same noise
    assert rows["triton"]["status"] == "error" and "kernel exploded" in rows["triton"]["note"]


def test_rows_are_checked_against_the_reference_when_it_is_not_timed(tiny_workload, tmp_path, monkeypatch):
    """Without ``reference`` among the methods, one untimed reference call still gives every
    row its max|diff| (a fast row off by 1e-3 shows it), and the reference gets no row."""

    def off_cuda(policy, cond, x, n_steps, generator):
        return _sampler.reference_loop(policy, cond, x, n_steps, generator) + 1e-3

    monkeypatch.setattr(_sampler, "_RUNNERS", {"reference": _sampler.reference_loop, "cuda": off_cuda})
    out = tmp_path / "result.json"
    assert benchmark.main([*TINY_ARGS, "--methods", "cuda", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["cuda"]
    assert rows[0]["max_abs_diff_vs_reference"] == pytest.approx(1e-3, rel=1e-3)


def test_a_fast_backends_captured_loop_is_also_timed_replayed_alone(tiny_workload, tmp_path, monkeypatch, capsys):
    """A row whose method captured a graph of its loop (a fast backend on a GPU: a capture in
    the policy's fast samplers) also gets that graph replayed alone, back to back, per
    evaluation ("replay"); a method that captured none (the reference; a backend whose graph an
    earlier method captured) gets none."""
    from types import SimpleNamespace

    replays = []

    def capturing_cuda(policy, cond, x, n_steps, generator, **kwargs):
        samplers = policy.__dict__.setdefault("_fast_samplers", {})
        if "cuda" not in samplers:  # captured on the first call, as FastSampler does
            graph = SimpleNamespace(replay=lambda: replays.append(1))
            samplers["cuda"] = SimpleNamespace(_captures={(x.shape[0], n_steps): SimpleNamespace(graph=graph)})
        return _sampler.reference_loop(policy, cond, x, n_steps, generator)

    monkeypatch.setattr(_sampler, "_RUNNERS", {"reference": _sampler.reference_loop, "cuda": capturing_cuda})
    out = tmp_path / "result.json"
    assert benchmark.main([*TINY_ARGS, "--methods", "reference,cuda,cuda-blocks", "--out", str(out)]) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert len(replays) == benchmark.REPLAYS_PER_TIMING * (benchmark.REPLAY_TIMINGS + 1)  # one timing's worth of warm-up
    assert rows["cuda"]["replay_us_per_eval"] > 0
    assert rows["reference"]["replay_us_per_eval"] is None and rows["cuda-blocks"]["replay_us_per_eval"] is None
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("workload") and "method" in line)
    assert header.split()[:5] == ["workload", "method", "ms/sample", "us/eval", "replay"]


def test_each_row_has_the_seconds_to_its_first_action(tiny_workload, tmp_path, monkeypatch, capsys):
    """"first s": from setting a method up to its first call's end, so a backend's one-off work
    (compiling, capturing: here a first call 0.3 s slower than the rest) is there and not in
    the timed calls."""
    import time

    calls = []

    def slow_first(policy, cond, x, n_steps, generator, **kwargs):
        if not calls:
            time.sleep(0.3)
        calls.append(1)
        return _sampler.reference_loop(policy, cond, x, n_steps, generator)

    monkeypatch.setattr(_sampler, "_RUNNERS", {"reference": _sampler.reference_loop, "cuda": slow_first})
    out = tmp_path / "result.json"
    assert benchmark.main([*TINY_ARGS, "--methods", "reference,cuda", "--out", str(out)]) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["cuda"]["first_call_ms"] >= 300 > rows["cuda"]["max_ms"]
    assert rows["reference"]["first_call_ms"] > 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("workload") and "method" in line)
    assert "first s" in header
    cuda_line = next(line for line in lines if line.split()[1:2] == ["cuda"])
    assert f"{rows['cuda']['first_call_ms'] / 1e3:.1f}" in cuda_line.split()


def test_unsupported_configuration_is_skipped_not_failed(tiny_workload, tmp_path, monkeypatch):
    def unsupported(policy, cond, x, n_steps, generator):
        raise NotImplementedError("horizon 8 is not supported")

    monkeypatch.setattr(_sampler, "_RUNNERS", {"reference": _sampler.reference_loop, "cuda": unsupported})
    out = tmp_path / "result.json"
    assert benchmark.main([*TINY_ARGS, "--methods", "reference,cuda", "--out", str(out)]) == 0
    cuda = json.loads(out.read_text())["rows"][1]
    assert cuda["status"] == "skipped" and "horizon 8" in cuda["note"]


@pytest.mark.parametrize("method,chain", [("cuda-chain", True), ("cuda-blocks", False)])
def test_cuda_variant_methods_ask_the_cuda_backend_for_the_chain_or_not(method, chain, tiny_workload, tmp_path, monkeypatch):
    """``--methods cuda-chain`` / ``cuda-blocks``: the CUDA backend's runner, asked for one chain
    launch per evaluation, or one launch per block; skipped where the CUDA backend is not built;
    never among the default methods."""
    calls = []

    def fake_cuda(policy, cond, x, n_steps, generator, **kwargs):
        calls.append(kwargs)
        return _sampler.reference_loop(policy, cond, x, n_steps, generator)

    assert method not in benchmark.default_methods()
    monkeypatch.setattr(_sampler, "_RUNNERS", {"reference": _sampler.reference_loop})
    out = tmp_path / "none.json"
    assert benchmark.main([*TINY_ARGS, "--methods", f"reference,{method}", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][1]["status"] == "skipped"
    monkeypatch.setattr(_sampler, "_RUNNERS", {"reference": _sampler.reference_loop, "cuda": fake_cuda})
    out = tmp_path / "chain.json"
    assert benchmark.main([*TINY_ARGS, "--methods", f"reference,{method}", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][1]
    assert row["method"] == method and row["status"] == "ok" and calls and all(c == {"chain": chain} for c in calls)
    assert row["max_abs_diff_vs_reference"] == 0.0


def test_workload_groups_and_all():
    assert benchmark._workload_list("W2") == ["W2-ddim16", "W2-ddpm100"]
    assert benchmark._workload_list("W1, W4") == ["W1", "W4"]
    assert benchmark._workload_list("all") == list(benchmark.WORKLOADS)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--workloads", "W9"], "unknown workload 'W9'; choose from W1, W2-ddim16"),
        (["--methods", "reference,fast"], "unknown method 'fast'; choose from reference, reference+graph"),
        (["--repeats", "0"], "must be >= 1"),
        (["--dtype", "fp16"], "invalid choice: 'fp16'"),
    ],
)
def test_bad_arguments_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error a GPU-less machine gives")
def test_cuda_device_without_a_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        benchmark.main(["--device", "cuda", "--workloads", "W1"])
    assert "torch sees no CUDA device" in capsys.readouterr().err


def test_gpu_session_runs_the_prepared_call_step_by_step(tmp_path):
    """The GPU call that bench/results/README.md prepares for the next lent machine (a lease of
    15 minutes, no second try), run here with a stand-in for python that records each command
    and the settings it ran under: every step starts with its own settings, and the JSON comes
    back as one archive. A typo in the script or the call would cost the whole lease."""
    import os
    import re
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    readme = open(os.path.join(root, "bench", "results", "README.md")).read()
    call = re.search(r"The next GPU session's call.*?```sh\n(.*?)```", readme, re.S).group(1)
    json_dir = tmp_path / "json"
    call = call.replace("JSON_DIR=/tmp/json", f"JSON_DIR={json_dir}")
    calls = tmp_path / "calls.txt"
    knobs = ["DP_FAST_CUDA_RING", "DP_FAST_GEMV_STAGES", "DP_FAST_GEMV_DEPTH", "DP_FAST_CUDA_CHAIN_FLAGS", "DP_FAST_MIN_CHUNKS_PER_SPLIT", "DP_FAST_GEMV_MAX_COLUMNS",
             "DP_FAST_CHAIN_PREFETCH_BYTES", "DP_FAST_CUDA_STAGED", "DP_FAST_LOOP_PREFETCH_CHUNKS", "DP_FAST_PDL_TRIGGER", "DP_FAST_WIDE_FINISH", "DP_FAST_WIDE_DEPTH", "DP_FAST_GEMV_3D_MAX_COLUMNS", "DP_FAST_HEAD", "DP_FAST_PDL"]
    stand_in = tmp_path / "python"
    stand_in.write_text("#!/bin/sh\necho \"$* |" + "".join(f" {k}=${{{k}:-}}" for k in knobs) + f"\" >> {calls}\n")
    stand_in.chmod(0o755)
    tools = tmp_path / "bin"  # Nsight Compute: a stand-in that records its command line
    tools.mkdir()
    (tools / "ncu").write_text(f"#!/bin/sh\necho \"ncu $*\" >> {calls}\n")
    (tools / "ncu").chmod(0o755)
    env = dict(os.environ, PY=str(stand_in), OUT=str(tmp_path / "out"), PATH=f"{tools}:{os.environ['PATH']}",
               PREBUILT=str(tmp_path / "no-prebuilt"), TRITON_CACHE_DIR=str(tmp_path / "triton"))  # whatever this checkout's prebuilt/ holds
    done = subprocess.run(["bash", "-c", call], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = calls.read_text().splitlines()

    def runs(script: str) -> list[str]:
        return [line for line in lines if script in line]

    assert len(runs("setup.py build_ext")) == 1  # the first command builds, the others reuse it
    tests = runs("-m pytest")
    assert len(tests) == 1 and "tests/test_conv_block.py tests/test_fast_backends.py" in tests[0]
    bench = runs("bench/run.py")
    assert len(bench) == 11, bench
    assert "--workloads W1,W2-ddim16 --methods triton,cuda --dtype fp32" in bench[0]
    assert bench[0].endswith("DP_FAST_CHAIN_PREFETCH_BYTES= DP_FAST_CUDA_STAGED= DP_FAST_LOOP_PREFETCH_CHUNKS= "
                             "DP_FAST_PDL_TRIGGER= DP_FAST_WIDE_FINISH= DP_FAST_WIDE_DEPTH= DP_FAST_GEMV_3D_MAX_COLUMNS= DP_FAST_HEAD= "
                             "DP_FAST_PDL=1")  # the defaults
    wide = lambda b: re.search(r"DP_FAST_WIDE_FINISH=(\S*) DP_FAST_WIDE_DEPTH=(\S*) ", b).groups()
    w4 = bench[1:3]  # W4 as it is, then with its regions finished by a launch of their own
    assert all("--workloads W4 --methods triton --dtype fp32" in b for b in w4), w4
    assert [wide(b) for b in w4] == [("", ""), ("kernel", "")], w4
    # Triton's GEMV tiles with 2-d chunks, with 3-d ones at every width, the next block let in after the
    # reductions, then Chi's output conv launched on its own (not fused into the last block)
    ab = bench[3:7]
    assert all("--workloads W1,W2-ddim16 --methods triton --dtype fp32" in b for b in bench[3:7] + bench[8:9]), bench
    gemv3d = lambda b: re.search(r"DP_FAST_GEMV_3D_MAX_COLUMNS=(\S*) ", b).group(1)
    assert [gemv3d(b) for b in ab] == ["0", "16", "", ""] and "DP_FAST_PDL_TRIGGER= " in ab[0], ab
    assert "DP_FAST_PDL_TRIGGER=late " in ab[2], ab
    assert [re.search(r"DP_FAST_HEAD=(\S*) ", b).group(1) for b in ab] == ["", "", "", "0"], ab
    # the CUDA backend's W2 with Chi's output conv launched on its own
    assert "--workloads W2-ddim16 --methods cuda --dtype fp32" in bench[7] and "DP_FAST_HEAD=0 " in bench[7], bench[7]
    assert bench[8].endswith("DP_FAST_PDL=0") and "DP_FAST_PDL_TRIGGER= " in bench[8]  # without dependent launches
    w4 = bench[9:11]  # W4 in bfloat16 with the finish launch, one and two chunks ahead
    assert all("--workloads W4 --methods triton --dtype bf16" in b for b in w4), w4
    assert [wide(b) for b in w4] == [("kernel", ""), ("kernel", "2")], w4
    timelines = runs("bench/diag/timeline.py")
    assert [re.search(r"--workload (\S+) --method (\S+)", t).groups() for t in timelines] == [("W1", "triton"), ("W2-ddim16", "triton")] * 2
    assert [t.endswith("DP_FAST_PDL=0") for t in timelines] == [False, False, True, True], timelines
    profiled = [re.search(r"--workload (\S+) --backend (\S+) --blocks (\S+)", b).groups() for b in runs("ncu ") if " -o " in b]
    assert profiled == [("W2-ddim16", "triton", "12"), ("W2-ddim16", "cuda", "12")], profiled
    assert all("--section SourceCounters" in b for b in runs("ncu ") if " -o " in b)
    assert [b.split()[-2:] for b in runs("ncu --import")] == [["--page", p] for _ in profiled for p in ("details", "raw", "source")]
    blocks = [b for b in runs("bench/blocks.py") if not b.startswith("ncu ")]  # W4's blocks alone, as they are and with the finish launch
    assert [re.search(r"--workload (\S+) --backend (\S+)", b).groups() for b in blocks] == [("W4", "triton")] * 2, blocks
    assert ["DP_FAST_WIDE_FINISH=kernel " in b for b in blocks] == [False, True], blocks
    # after the first benchmark: Triton's W2 and W1, W1's CUDA chain, W4 after its A/B, W2 without dependent launches
    probes = runs("bench/diag/probe.py")
    assert [re.search(r"--workload (\S+) --method (\S+) --dtype (\S+)", p).groups() for p in probes] == [
        ("W2-ddim16", "triton", "fp32"), ("W1", "triton", "fp32"), ("W1", "cuda-chain", "fp32"), ("W4", "triton", "fp32"),
        ("W2-ddim16", "triton", "fp32")], probes
    assert [p.endswith("DP_FAST_PDL=0") for p in probes] == [False] * 4 + [True], probes
    assert lines.index(probes[0]) < lines.index(bench[1]) < lines.index(probes[3]) < lines.index(bench[3]), lines
    outs = [re.search(r"--out (\S+)", b).group(1) for b in bench + timelines + blocks + probes]
    assert len(set(outs)) == len(outs), outs
    assert not list((tmp_path / "out").glob("sanitize-*.log"))  # no sanitizer step this time
    assert (tmp_path / "out" / "json.tgz").exists()


@pytest.mark.parametrize("stamped, matches, loads, builds", [
    (False, True, True, True), (True, False, True, True), (True, True, False, True), (True, True, True, False)])
def test_gpu_session_builds_unless_a_prebuilt_extension_is_usable(tmp_path, stamped, matches, loads, builds):
    """bench/gpu_session.sh asks bench/prebuilt.py to put a prebuilt extension in place where one
    is stamped, and builds where none is, it does not match (bench/prebuilt.py's exit status) or
    it does not load with its CUDA kernels."""
    import os
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    calls = tmp_path / "calls.txt"
    stand_in = tmp_path / "python"  # records its command line; the stamp's check and the load answer as told
    stand_in.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n'
                        f'case "$*" in *"prebuilt.py use"*) exit {int(not matches)};; *"cuda_compiled()"*) exit {int(not loads)};; esac\n')
    stand_in.chmod(0o755)
    prebuilt = tmp_path / "prebuilt"
    prebuilt.mkdir()
    if stamped:
        (prebuilt / "stamp.json").write_text("{}")
        kernels = tmp_path / "kernels"  # two compiled kernels' cache entries
        for entry in ("a" * 8, "b" * 8):
            (kernels / entry).mkdir(parents=True)
            (kernels / entry / "k.cubin").write_bytes(b"\0")
        subprocess.run(["tar", "czf", str(prebuilt / "triton-cache.tgz"), "-C", str(kernels), "."], check=True)
    cache = tmp_path / "triton"
    env = dict(os.environ, PY=str(stand_in), OUT=str(tmp_path / "out"), PREBUILT=str(prebuilt), TRITON_CACHE_DIR=str(cache))
    for first in (True, False):  # the prepared call runs the script once a line: the cache is unpacked once
        done = subprocess.run(["bash", "bench/gpu_session.sh", "stream"], cwd=root, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert f"Triton kernels: {2 if stamped else 0} in the cache at the start, 0 compiled by this command" in done.stdout
        if stamped and first:
            (cache / ("a" * 8) / "k.cubin").write_bytes(b"used")
    lines = calls.read_text().splitlines()
    assert sum(f"bench/prebuilt.py use --dir {prebuilt}" in line for line in lines) == 2 * stamped, lines
    assert sum("setup.py build_ext --inplace" in line for line in lines) == 2 * builds, lines
    assert sum("bench/diag/weight_stream.py" in line for line in lines) == 2, lines  # the step ran either way
    if stamped:
        assert (cache / ("a" * 8) / "k.cubin").read_bytes() == b"used"  # not unpacked over


def test_gpu_session_reads_triton_kernels_where_precompile_writes_them():
    """Triton's cache entries name their files by absolute path: the folder must be the same."""
    import os
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = open(os.path.join(root, "bench", "gpu_session.sh")).read()
    precompile = open(os.path.join(root, "bench", "precompile.py")).read()
    assert re.search(r'TRITON_CACHE_DIR:-(\S+)}', script).group(1) == re.search(r'^CACHE_DIR = "(\S+)"', precompile, re.M).group(1)


def test_prebuild_compiles_every_setting_of_the_prepared_call():
    """bench/prebuild.sh's list of Triton runs follows the prepared call by hand: a setting of the
    call missing from it would be compiled inside the lease again."""
    import os
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    readme = open(os.path.join(root, "bench", "results", "README.md")).read()
    call = re.search(r"The next GPU session's call.*?```sh\n(.*?)```", readme, re.S).group(1)
    listed = re.search(r'PRECOMPILE-"(.*?)"}', open(os.path.join(root, "bench", "prebuild.sh")).read(), re.S).group(1)
    settings = set(re.findall(r"DP_FAST_[A-Z0-9_]+=[^\s,\"]+", call)) | ({"DP_FAST_PDL=0"} if "PDL_LIST=0" in call else set())
    assert settings and all(s in listed for s in settings), settings
    assert ("DTYPE=bf16" in call) <= ("--dtype bf16" in listed)
    for workloads in re.findall(r"PROBE_WORKLOADS=\"?([^\"\s]+(?: W[^\"\s]+)*)", call):
        for w in workloads.split():
            assert re.search(rf"--workloads \S*{w}\S* --probe", listed), w
