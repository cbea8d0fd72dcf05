"""Runs dp_fast's benchmark: SPEC.md's workloads W1-W5 for the peer methods and every backend.

    python bench/run.py [--quick] [--workloads W1,W2] [--methods ...] [--dtype fp32|tf32|bf16] [--out PATH]

See bench/README.md, or ``python bench/run.py --help``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo's dp_fast, installed or not

from dp_fast.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
