"""The Triton kernel compiled by the real Triton compiler for the H100 (sm_90), on a machine
without a GPU: the interpreter tests check the numbers, this checks that the kernel the GPU will
run compiles, for every kind of block of Chi's network, and stays out of local memory.

Runs ``bench/diag/triton_sass.py`` in a subprocess (this process imported Triton in interpreter
mode). Skips where Triton's CUDA backend tools (ptxas, cuobjdump) are missing."""

import os
import re
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")

# W2's blocks: 0 the first (FiLM on the sample), 4 a downsample, 11 a 1x1 residual conv (T=4),
# 18 the skip concatenation read from two inputs, 22 a transposed upsample (T=8), 27 one at T=16
# (GEMV tiles of 16 columns; tl.dot with DP_FAST_GEMV_MAX_COLUMNS=8), 28 the last: final_conv's
# Conv1dBlock with the output 1x1 conv (its head) and the scheduler step fused in.
BLOCKS = "0,4,11,18,22,27,28"


def _table(workload: str, dtype: str, blocks: str, **settings: str) -> list[dict]:
    """The diagnostic's rows for ``blocks``, each a dict keyed by its header; ``settings``: more
    environment variables (the backend's knobs)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | settings
    run = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "diag", "triton_sass.py"), "--workload", workload,
                          "--dtype", dtype, "--blocks", blocks], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line.split() for line in run.stdout.splitlines()]
    header = next(line for line in lines if line and line[0] == "#")
    rows = [dict(zip(header, line)) for line in lines if line and line[0].isdigit()]
    assert [int(r["#"]) for r in rows] == [int(b) for b in blocks.split(",")], run.stdout
    for r in rows:
        # programmatic dependent launch: the weight prefetch, then the wait before any other access
        assert int(r["pf"]) > 0 and int(r["early"]) == 0, f"block {r['#']}: prefetches / memory accesses before the wait:\n{run.stdout}"
    return rows


needs_tools = pytest.mark.skipif(not all(os.path.exists(os.path.join(TOOLS, t)) for t in ("ptxas", "cuobjdump")),
                                 reason="Triton's CUDA backend tools are not installed")


@needs_tools
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_triton_kernel_compiles_for_sm90_without_spills(dtype):
    rows = _table("W2-ddim16", dtype, BLOCKS)
    kinds = {r["#"]: r["prod"] for r in rows}
    assert kinds["11"] == "gemv3" and kinds["27"] == "gemv", rows  # 4 columns (3-d chunks) and 16
    dot = _table("W2-ddim16", dtype, "27", DP_FAST_GEMV_MAX_COLUMNS="8")
    assert dot[0]["prod"] == "dot", dot  # the tl.dot tile, which batches of 32 to 63 columns take
    assert all(int(r["lpf"]) == 0 for r in rows), rows  # no L2 prefetch in the loops by default
    # the next launch let in before the main loop by default, after it with DP_FAST_PDL_TRIGGER=late
    # (block 0, ten reduction indices, has no loop to place it against)
    assert all(r["trig"] == ("-" if r["#"] == "0" else "early") for r in rows), rows
    late = _table("W2-ddim16", dtype, "11,27", DP_FAST_PDL_TRIGGER="late")
    assert [r["trig"] for r in late] == ["late", "late"], late  # 11: a block with a 1x1 residual conv too
    # with DP_FAST_LOOP_PREFETCH_CHUNKS=4 the GEMV loops ask L2 for the weights chunks ahead where
    # a chunk's row spans a 128-byte line: not bfloat16's 32-row chunks at 16 columns; block 0
    # (10 reduction indices) has no loop
    ahead = _table("W2-ddim16", dtype, BLOCKS, DP_FAST_LOOP_PREFETCH_CHUNKS="4")
    prefetching = [r for r in ahead if r["prod"].startswith("gemv") and int(r["loop"]) > 0 and not (dtype == "bf16" and r["cols"] == "16")]
    assert len(prefetching) >= 3 and all(int(r["lpf"]) > 0 for r in prefetching), ahead
    rows += dot + ahead
    for r in rows:
        assert int(r["spill"]) == 0, f"block {r['#']} spills to local memory: {r}"


@needs_tools
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_triton_gemv3d_loops_move_less_through_shared_memory(dtype):
    """W2's block 12 (1024 channels at T=4: a GEMV tile of 4 columns) loads its chunks as 3-d
    tensors of the product's shape (GEMV_3D_MAX_COLUMNS' default): against the 2-d loads
    (DP_FAST_GEMV_3D_MAX_COLUMNS=0), its main loop has fewer instructions, fewer shared-memory
    loads and stores and no more CTA barriers, the sum of its products after the loop is shorter,
    and nothing spills. Block 4 (8 columns) keeps the 2-d loads: the same kernel either way."""
    new = _table("W2-ddim16", dtype, "4,12")
    old = _table("W2-ddim16", dtype, "4,12", DP_FAST_GEMV_3D_MAX_COLUMNS="0")
    assert [r["prod"] for r in new] == ["gemv", "gemv3"] and [r["prod"] for r in old] == ["gemv", "gemv"], (new, old)
    assert new[0] == old[0], (new[0], old[0])
    n, o = new[1], old[1]
    assert int(n["spill"]) == 0 and int(n["lmem"]) == 0, n
    assert int(n["loop"]) < int(o["loop"]) and int(n["lds"]) < int(o["lds"]) and int(n["sts"]) < int(o["sts"]), (n, o)
    assert int(n["bar"]) <= int(o["bar"]) and int(n["post"]) < int(o["post"]), (n, o)


@needs_tools
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_triton_wide_tiles_compile_to_hopper_tensor_core_products(dtype):
    """W4's (batch 64) blocks 1 (256 channels: four 32-channel groups to a tile), 9 (a
    downsample), 11 (1024 channels, T=4) and 22 (a transposed upsample): tensor-core products in
    the main loop (float32 as tf32x3) and no spill inside it, each warp instruction of the loop
    worth more multiply-adds than the 32 of a CUDA-core FFMA (about 70 with Triton 3.8, 95 with
    3.6). (The skip-concatenation blocks 18 and 23 spill 16-17 words per trip in float32.) The
    same blocks with their split regions finished by a launch of their own."""
    last = _table("W4", dtype, "1,9,11,22")
    for r in last:
        assert r["prod"] == "dot" and int(r["co"]) == 128 and int(r["mma"]) > 0 and int(r["lmem"]) == 0, r
        assert float(r["MAC/i"]) > 32, r
    # DP_FAST_WIDE_FINISH=kernel: a finish launch's programs (whole batch elements of a region
    # each, about one an SM) instead of the last of each region's programs, whose tail issues
    # thousands of instructions a warp; the finish launch too touches memory only after its wait
    # (the table's "early")
    for r, old in zip(_table("W4", dtype, "1,9,11,22", DP_FAST_WIDE_FINISH="kernel"), last):
        assert int(r["fin"]) >= 4 * int(old["fin"]) and 3 * int(r["tail"]) < int(old["tail"]), (r, old)
        assert int(r["lmem"]) == 0 and int(r["mma"]) > 0, r


@needs_tools
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_triton_staged_gemv_loops_copy_asynchronously_without_spills(dtype):
    """DP_FAST_GEMV_STAGES=4 (dp_fast.triton.conv_block.GEMV_STAGES): W2's GEMV blocks (a
    downsample, a 1x1 residual conv, the skip concatenation, a transposed upsample) as plain loops
    that Triton's pipeliner stages: cp.async copies in the main loop, nothing spilled. The
    interpreter tests run the loop unstaged; this is where the staging itself is checked."""
    for r in _table("W2-ddim16", dtype, "4,11,18,22", DP_FAST_GEMV_STAGES="4"):
        assert r["prod"].startswith("gemv") and int(r["cpa"]) > 0 and int(r["spill"]) == 0 and int(r["lmem"]) == 0, r


@needs_tools
def test_triton_probed_kernel_reads_its_clocks_where_the_phases_are(tmp_path):
    """dp_fast.triton.conv_block.probing() compiled for sm_90 (bench/diag/probe.py's kernels):
    the same main loop within a few instructions and no spill; the cycle counter read at the
    start, right after the wait for the previous launch (before any load of the block's input),
    after the loop, after the arrival at the region's counter (its value waited for) and at the
    end; the global timer at the start and the end; nothing but the weight prefetch before the
    wait still."""
    plain = {r["#"]: r for r in _table("W2-ddim16", "fp32", "11,12,27")}
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "diag", "triton_sass.py"), "--workload", "W2-ddim16",
                          "--blocks", "11,12,27", "--probe", "--dump", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "probed" in run.stdout.splitlines()[0]
    lines = [line.split() for line in run.stdout.splitlines()]
    header = next(line for line in lines if line and line[0] == "#")
    for r in (dict(zip(header, line)) for line in lines if line and line[0].isdigit()):
        assert int(r["spill"]) == 0 and int(r["early"]) == 0 and int(r["pf"]) > 0, r
        assert abs(int(r["loop"]) - int(plain[r["#"]]["loop"])) <= 8, (r, plain[r["#"]])
        sass = (tmp_path / f"block-{r['#']}.sass").read_text()
        ops = [(i, line) for i, line in enumerate(sass.splitlines()) if re.search(r"/\*[0-9a-f]{4,}\*/", line)]
        at = lambda pattern: [i for i, line in ops if pattern in line]  # noqa: E731
        clocks, timers = at("SR_CLOCKLO"), at("SR_GLOBALTIMERLO")
        wait, loads, arrival = at("ACQBULK"), at("LDG.E"), at("ATOMG.E.ADD")
        assert len(clocks) == 5 and len(timers) == 2 and len(wait) == 1 and len(arrival) == 1, (r["#"], clocks, timers)
        assert clocks[0] < wait[0] < clocks[1] < min(i for i in loads if i > wait[0]), r["#"]
        assert clocks[2] < arrival[0] < clocks[3] < clocks[4] and timers[0] < wait[0] < clocks[4] < timers[1], r["#"]
