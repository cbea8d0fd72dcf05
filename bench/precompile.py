"""Triton's kernels for a lent GPU, compiled here ahead of its lease into a cache it can carry.

A fresh lent machine has an empty Triton cache, so every kernel variant a call runs is compiled
inside the lease: W2's network alone is 25 of them (17 s on this project's 2-core machine), and
each A/B setting, dtype and probed run of a prepared call is another set. This script compiles,
for sm_90 and without a GPU, the kernels the Triton backend launches for one network evaluation
of each workload: the sampler's own launch path (``bench/diag/triton_sass.py``'s
``record_launches``), each launch handed to the kernel's own JIT with ``warmup=True`` under a
stand-in driver that reports an sm_90 device. The JIT derives its cache key as it would on the
GPU, and Triton's key is made of contents (the kernel's source, its specialisation, the
options, Triton's own files, ptxas' version), so the lent machine finds these entries where its
Triton and ptxas are these. A key that differs there only means the kernel is compiled there,
as without this script.

The cache's entries name their files by absolute path, so it is made in, and read from,
``CACHE_DIR`` on both machines (``bench/gpu_session.sh`` sets ``TRITON_CACHE_DIR`` to it and
unpacks ``prebuilt/triton-cache.tgz`` there). Settings (``DP_FAST_*``) are read at import, so
each setting is its own process:

    python bench/precompile.py --workloads W1,W2-ddim16 [--dtype bf16] [--probe] [--set DP_FAST_PDL=0,...]

Run it with the lent machine's Triton (``bench/prebuild.sh``'s environment has it: torch 2.11
brings Triton 3.6.0); ``bench/prebuild.sh`` runs the prepared call's list (PRECOMPILE).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, do not interpret

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench", "diag"))  # triton_sass, imported where it is needed (it imports torch)
CACHE_DIR = "/tmp/dp-fast-triton-cache"
H100_SMS = 132  # the H100 SXM's and the H200's SMs: the plans (grids, splits) depend on it


class _TargetDriver:
    """Triton's active driver as the JIT asks it before a compile: one device of compute capability ``arch``."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


@contextlib.contextmanager
def _counting():
    """Counts the compiles the block makes and those Triton's cache answered: {"hit", "compiled"}."""
    from triton import knobs

    counts = {"hit": 0, "compiled": 0}

    def listener(*, cache_hit, **_):
        counts["hit" if cache_hit else "compiled"] += 1

    saved = knobs.compilation.listener
    knobs.compilation.listener = listener
    try:
        yield counts
    finally:
        knobs.compilation.listener = saved


def compile_workload(workload: str, dtype: str, probe: bool, arch: int = 90, sms: int = H100_SMS) -> dict:
    """Compiles the Triton kernels of one evaluation of ``workload`` into the cache (the JIT's
    warm-up path, no launch): {"launches", "hit", "compiled", "seconds"}; a block with a finish
    launch (DP_FAST_WIDE_FINISH=kernel) compiles two kernels."""
    import triton_sass  # compiles for the GPU: it takes TRITON_INTERPRET out of the environment
    from triton.runtime import driver

    from dp_fast.ops.conv_block import PDL  # DP_FAST_PDL, as the launcher reads it

    tcb = triton_sass.tcb
    pdl = arch >= 90 and PDL  # dependent_launch() on a GPU of that compute capability
    t0 = time.perf_counter()
    with tcb.probing() if probe else contextlib.nullcontext():
        launches = triton_sass.record_launches(workload, dtype, sms, pdl)
    saved = driver._active  # reset_active() would look for a GPU driver, which a machine without a GPU lacks
    driver.set_active(_TargetDriver(arch))
    try:
        with _counting() as counts:
            for _, grid, args, kwargs, finish in launches:
                tcb._conv_block_kernel.run(*args, grid=grid, warmup=True, **kwargs)
                if finish is not None:
                    fgrid, fargs, fkwargs = finish
                    tcb._conv_block_finish_kernel.run(*fargs, grid=fgrid, warmup=True, **fkwargs)
    finally:
        driver._active = saved
    return dict(counts, launches=len(launches), seconds=time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="W1,W2-ddim16", help="comma-separated (bench/run.py --list)")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "tf32", "bf16"))
    ap.add_argument("--probe", action="store_true", help="the probed kernels (bench/diag/probe.py's)")
    ap.add_argument("--set", default="", help="settings for this run, VAR=value[,VAR=value...] (DP_FAST_* knobs)")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--cache", default=CACHE_DIR, help="Triton's cache folder (where the lent machine reads it)")
    args = ap.parse_args(argv)
    settings = dict(s.split("=", 1) for s in args.set.split(",") if s)
    if any(os.environ.get(k) != v for k, v in settings.items()) or os.environ.get("TRITON_CACHE_DIR") != args.cache:
        # the knobs are read at import: a process of their own, with the cache where it is asked for
        env = dict(os.environ, TRITON_CACHE_DIR=args.cache, **settings)
        return subprocess.call([sys.executable, os.path.abspath(__file__), *(argv if argv is not None else sys.argv[1:])], env=env)
    for workload in args.workloads.split(","):
        r = compile_workload(workload, args.dtype, args.probe, args.arch)
        print(f"{workload} {args.dtype}{' probed' if args.probe else ''} {args.set or '-'}: {r['launches']} launches, "
              f"{r['compiled']} compiled, {r['hit']} from the cache, {r['seconds']:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
