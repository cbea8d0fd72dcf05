"""The CUDA kernel's racecheck on the CPU (tests/emulation/racecheck.py): a subset of the
emulated tests, one of each path, run with the emulation built under ThreadSanitizer, which
must report no data race in the kernel's source (a missing __syncthreads between a shared-memory
write and another thread's read, a grid barrier that does not order the chain's activations)."""

import importlib.util
import os
import subprocess
import sys

import pytest

from emulation import load as emulation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "emulation", "racecheck.py")

# One case of each path: the GEMV and tiled reductions with and without the weight ring, split
# or whole, the 1x1 residual conv, the skip input, GroupNorm, the fused step; the chain's tiled
# and staged entries on a grid of one CTA and spread over several; between concurrent CTAs, the
# chain's grid barrier and the split finish's arrival.
SUBSET = " or ".join([
    "test_conv_block_split_reduction_matches_float64_pytorch and cuda-emulated and (T8-B3-gn4 or T32-B2-gn3 or c6+5 or stepTrue)",
    "test_cuda_weight_ring_matches_float64_pytorch and cuda-emulated and (dtype1 or dtype2)",
    "test_cuda_chain_staged_entry_matches_float64_pytorch",
    "test_cuda_chain_kernel_spreads_a_block_over_any_grid",
    "test_cuda_chain_grid_barrier_holds_between_concurrent_ctas",
    "test_cuda_split_arrival_orders_partials_between_concurrent_ctas",
])


def _racecheck():
    spec = importlib.util.spec_from_file_location("racecheck", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_racecheck_reads_only_the_kernels_reports():
    """Which reports count: a race with a frame of the kernel's (or the emulation's) source in
    one of its two accesses; not one whose only such frame is in a thread's creation stack."""
    rc = _racecheck()
    ours = ("WARNING: ThreadSanitizer: data race (pid=1)\n  Write of size 8 at 0x1 by thread T2:\n"
            "    #0 operator() /repo/kernels/conv_block.cu:372 (x.so+0x1)\n\n  Previous read of size 8 at 0x1 by thread T3:\n"
            "    #0 reduce<double, 16> /repo/kernels/conv_block.cu:423 (x.so+0x2)\n\n  Thread T2 (tid=5, running) created by main thread at:\n"
            "    #0 pthread_create tsan_interceptors_posix.cpp:1001\n")
    theirs = ("WARNING: ThreadSanitizer: data race (pid=1)\n  Write of size 8 at 0x2 by thread T119:\n    #0 free rtld-malloc.h:50\n\n"
              "  Previous read of size 8 at 0x2 by thread T258:\n    #0 ~deque stl_deque.h:620\n\n"
              "  Thread T258 (tid=7, finished) created by main thread at:\n    #0 run_grid /repo/tests/emulation/conv_block_cpu.cpp:247\n")
    assert rc.own(ours) and not rc.own(theirs)
    assert "conv_block.cu:423" in rc.racing_accesses(ours) and "pthread_create" not in rc.racing_accesses(ours)


@emulation.skip_unless_available()
def test_emulated_kernel_has_no_data_races_under_thread_sanitizer():
    rc = _racecheck()
    if rc.runtime() is None:
        if os.environ.get("DP_FAST_REQUIRE_CUDA", "") == "1":
            pytest.fail("the host compiler has no ThreadSanitizer runtime (libtsan.so)")
        pytest.skip("the host compiler has no ThreadSanitizer runtime (libtsan.so)")
    result = subprocess.run([sys.executable, SCRIPT, "tests/test_conv_block.py", "tests/test_fast_backends.py", "-k", SUBSET],
                            capture_output=True, text=True, cwd=ROOT, timeout=2400)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0 and summary.startswith("racecheck: 0 data races"), (result.stdout[-4000:] + result.stderr[-4000:])
    passed = [line for line in result.stdout.splitlines() if " passed" in line]
    assert passed and int(passed[-1].split(" passed")[0].split()[-1]) >= 20, passed  # the subset ran, not skipped
