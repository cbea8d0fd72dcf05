"""bench/precompile.py: the Triton kernels of a workload compiled for sm_90 on a machine without a
GPU, through the kernels' own JIT, into a cache that a second process (the lent machine's, where
its Triton and ptxas are these) finds every one of them in. Skips where Triton's CUDA backend
tools are missing, as the sm_90 compile tests do."""

import os
import re
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


@pytest.mark.skipif(not os.path.exists(os.path.join(TOOLS, "ptxas")), reason="Triton's CUDA backend tools are missing")
def test_a_second_process_finds_every_precompiled_kernel_in_the_cache(tmp_path):
    cache = tmp_path / "cache"

    def precompile(*extra):
        run = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "precompile.py"), "--workloads", "W1", "--cache", str(cache), *extra],
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        return re.search(r"(\d+) launches, (\d+) compiled, (\d+) from the cache", run.stdout).groups()

    launches, compiled, hit = map(int, precompile())
    assert launches == 8 and compiled >= 1 and compiled + hit == launches  # W1: the lesson's 8 blocks
    entries = {d for d in os.listdir(cache) if os.path.isdir(cache / d)}
    assert len(entries) == compiled
    assert tuple(map(int, precompile())) == (8, 0, 8)  # a fresh process: all from the cache
    # another setting is another kernel: its variants compiled, the others' entries untouched
    launches, compiled, hit = map(int, precompile("--set", "DP_FAST_PDL=0"))
    assert compiled >= 1
    assert entries < {d for d in os.listdir(cache) if os.path.isdir(cache / d)}
