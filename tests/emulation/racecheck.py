"""A racecheck of the CUDA kernel on the CPU: the tests of its emulation (conv_block_cpu.cpp, a
std::thread per CUDA thread) run with the emulation built under ThreadSanitizer, which reports
every pair of accesses to one address, at least one a write, by two threads that nothing orders:
in the kernel, a shared-memory (or global) access that no __syncthreads, warp exchange or
atomic separates from another thread's, and in the chain's grid barrier test, an activation
write the barrier does not order before the reads after it. TSan reports what the code allows,
whatever order the threads happened to run in, which the emulated tests' values cannot show;
it does not see the GPU's own ordering (a missing fence the CPU's stronger memory model hides
is still missed where the C++ atomics used are strong enough), nor races between concurrent CTAs
other than the barrier test's.

    python tests/emulation/racecheck.py [pytest arguments]     (default: every emulated test)

Re-runs itself with the sanitizer's runtime preloaded (it must be loaded first), runs pytest on
the emulated tests, and exits 1 if a report has a frame of the kernel's or the emulation's
source in either racing access (the rest of the process, torch and the C library, is not
instrumented; what TSan says about it, thread-local storage freed at thread exit for one, is
counted, not reported), or if a test failed; 2 if the runtime is not there.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHILD = "DP_FAST_RACECHECK_LOG_DIR"  # set in the re-run, with the sanitizer preloaded
DEFAULT_ARGS = ["tests/test_conv_block.py", "tests/test_fast_backends.py", "-k",
                "(emulat or cuda_chain or cuda_kernel or cuda_weight_ring or cuda_operator or cuda_conv_block) and not triton"]
# A report is the kernel's when a frame of these files is in one of its two racing accesses.
OWN_SOURCE = re.compile(r"kernels/|csrc/|tests/emulation/conv_block_cpu\.cpp")
SUPPRESSIONS = "race:_dl_deallocate_tls\nrace:libc10.so\nrace:libtorch_cpu.so\nrace:libgomp.so\n"


def runtime() -> str | None:
    """The path of the host compiler's ThreadSanitizer runtime, or None."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        return None
    try:
        path = subprocess.run([compiler, "-print-file-name=libtsan.so"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return path if os.path.isabs(path) and os.path.exists(path) else None


def reports(log_dir: str) -> list[str]:
    """Every report TSan wrote to the logs in log_dir."""
    out = []
    for path in sorted(glob.glob(os.path.join(log_dir, "log*"))):
        with open(path, errors="replace") as f:
            out += [r for r in f.read().split("==================\n") if "WARNING: ThreadSanitizer" in r]
    return out


def racing_accesses(report: str) -> str:
    """A report's two access stacks (before the threads' creation stacks and the location)."""
    return re.split(r"\n  (?:Thread T\d+|Location is|Mutex M\d+)", report)[0]


def own(report: str) -> bool:
    return OWN_SOURCE.search(racing_accesses(report)) is not None


def main(argv: list[str]) -> int:
    args = argv or DEFAULT_ARGS
    log_dir = os.environ.get(CHILD)
    if log_dir is None:  # the parent: re-run with the runtime preloaded
        lib = runtime()
        if lib is None:
            print("racecheck: the host compiler has no ThreadSanitizer runtime (libtsan.so)", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory() as tmp:
            suppressions = os.path.join(tmp, "suppressions.txt")
            with open(suppressions, "w") as f:
                f.write(SUPPRESSIONS)
            env = dict(os.environ, LD_PRELOAD=lib, OMP_NUM_THREADS="1", DP_FAST_EMULATION_SANITIZE="thread", **{CHILD: tmp},
                       TSAN_OPTIONS=f"log_path={tmp}/log halt_on_error=0 report_signal_unsafe=0 suppressions={suppressions}")
            return subprocess.run([sys.executable, os.path.abspath(__file__), *args], env=env, cwd=ROOT).returncode
    # the re-run: the runtime is loaded; the compiler the build starts must not preload it
    os.environ.pop("LD_PRELOAD", None)
    import pytest

    status = pytest.main(["-q", "-p", "no:cacheprovider", *args])
    found = reports(log_dir)
    mine = [r for r in found if own(r)]
    for r in mine[:5]:
        print(racing_accesses(r), file=sys.stderr)
    print(f"racecheck: {len(mine)} data races in the kernel or its emulation "
          f"({len(found) - len(mine)} other reports from uninstrumented code ignored); pytest exit status {int(status)}")
    return 1 if mine or status != 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
