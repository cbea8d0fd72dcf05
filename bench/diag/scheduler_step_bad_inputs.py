"""Which bad input of tests/test_scheduler_step.py crashes the process (seen on the lent H100,
torch 2.11, 2026-11-25: test_scheduler_step_op_rejects_bad_inputs_naming_what_was_expected
ended in a segmentation fault there, not on the CPU machines). Runs each case in its own
process and prints how it ended; a case killed by a signal runs again under cuda-gdb, where it
is installed (the lent GPU machines), for a backtrace. Not reproduced on the CPU machine with
torch 2.11.0+cu130 on Python 3.11 either (2026-11-25). Found with it on the H200 (2026-11-26):
every case whose message formats a number crashed in std::ostream code linked into _C.so itself,
a static libstdc++ from the image's compiler; setup.py now links the shared one (bench/results/
README.md, H200 section). Kept to check a new machine's build the same way.

    python bench/diag/scheduler_step_bad_inputs.py [cpu|cuda]
"""

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CASE = """
import sys, faulthandler; faulthandler.enable()
sys.path[:0] = [{root!r}, {tests!r}]
import test_scheduler_step as t
from dp_fast import _ext
name, kwargs, match = t._bad_inputs({device!r})[{i}]
try:
    _ext.ops().scheduler_step(**kwargs); print(name, "no error")
except Exception as e:
    print(name, type(e).__name__, str(e).splitlines()[0][:120])
"""

if __name__ == "__main__":
    device = sys.argv[1] if len(sys.argv) > 1 else "cuda"
    for i in range(11):
        code = CASE.format(root=ROOT, tests=os.path.join(ROOT, "tests"), device=device, i=i)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if "IndexError" in r.stderr:
            break
        print(f"case {i}: rc={r.returncode}", (r.stdout.strip() or r.stderr.strip().splitlines()[-1:]))
        if r.returncode < 0 and shutil.which("cuda-gdb"):  # killed by a signal: where, in C++ frames
            gdb = subprocess.run(["cuda-gdb", "-batch", "-ex", "run", "-ex", "bt 25", "--args", sys.executable, "-c", code],
                                 capture_output=True, text=True)
            print("\n".join(line for line in gdb.stdout.splitlines() if line.startswith("#"))[:4000])
