"""The Triton kernel compiled by the real Triton compiler for the H100 (sm_90), on a machine
without a GPU: the interpreter tests check the numbers, this checks that the kernel the GPU will
run compiles, for every kind of block of Chi's network, and stays out of local memory.

Runs ``bench/diag/triton_sass.py`` in a subprocess (this process imported Triton in interpreter
mode). Skips where Triton's CUDA backend tools (ptxas, cuobjdump) are missing."""

import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")

# W2's blocks: 0 the first (FiLM on the sample), 4 a downsample, 11 a 1x1 residual conv (T=4),
# 18 the skip concatenation read from two inputs, 22 a transposed upsample (T=8), 27 one at T=16
# (tl.dot), 29 the output 1x1 conv with the scheduler step.
BLOCKS = "0,4,11,18,22,27,29"


@pytest.mark.skipif(not all(os.path.exists(os.path.join(TOOLS, t)) for t in ("ptxas", "cuobjdump")),
                    reason="Triton's CUDA backend tools are not installed")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_triton_kernel_compiles_for_sm90_without_spills(dtype):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "diag", "triton_sass.py"), "--workload", "W2-ddim16",
                          "--dtype", dtype, "--blocks", BLOCKS], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line.split() for line in run.stdout.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == [int(b) for b in BLOCKS.split(",")], run.stdout
    kinds = {r[0]: r[6] for r in rows}
    assert kinds["11"] == "gemv" and kinds["27"] == "dot", run.stdout  # both products compiled
    for r in rows:
        assert int(r[12]) == 0, f"block {r[0]} spills to local memory:\n{run.stdout}"
        # programmatic dependent launch: the weight prefetch, then the wait before any other access
        assert int(r[16]) > 0 and int(r[17]) == 0, f"block {r[0]}: prefetches / memory accesses before the wait:\n{run.stdout}"
