"""The extension built here, ahead of a GPU lease, for the lent machine's torch and Python.

Building ``dp_fast._C`` on the lent machine takes about 145 s of a 15-minute lease (stop 21).
``bench/prebuild.sh`` builds it on the development machine instead, against the same torch
release and Python minor version as the lent machine's (torch's PyPI wheel 2.11.0 is the lent
machine's ``2.11.0+cu130``), and writes it to ``prebuilt/`` with a stamp: a digest of every
build input, the torch version, the Python tag and the target GPUs. A call carries
``prebuilt`` (``run``'s ``carry``); ``bench/gpu_session.sh`` uses the extension where the stamp
matches the checkout and the interpreter it runs, and builds as before where it does not.

    python bench/prebuilt.py stamp   # after the build: write prebuilt/stamp.json
    python bench/prebuilt.py use     # install prebuilt/'s extension into dp_fast/ if the stamp
                                     # matches (exit 0), else say why (exit 1)
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# what the extension is built from: the Makefile's BUILD_INPUTS
INPUTS = ("setup.py", "pyproject.toml", "csrc/*.cpp", "csrc/*.h", "kernels/*.cu", "kernels/*.cuh", "kernels/*.h")


def inputs_digest(root: str = ROOT) -> str:
    """sha256 over the build inputs' paths and contents, in sorted order."""
    h = hashlib.sha256()
    for path in sorted({p for pattern in INPUTS for p in glob.glob(os.path.join(root, pattern))}):
        h.update(os.path.relpath(path, root).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read() + b"\0")
    return h.hexdigest()


def extension_name() -> str:
    """The extension's file name for this interpreter (``_C.cpython-312-x86_64-linux-gnu.so``)."""
    return "_C" + sysconfig.get_config_var("EXT_SUFFIX")


def expected(root: str = ROOT) -> dict:
    """What a prebuilt extension must have been built for, to be used here."""
    import torch

    return {
        "inputs": inputs_digest(root),
        "torch": torch.__version__,
        "extension": extension_name(),
        "arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST", ""),
    }


def mismatch(stamp: dict, want: dict) -> str | None:
    """Why a prebuilt extension stamped ``stamp`` cannot stand for a build with ``want``, or None."""
    for key, label in (("inputs", "the build inputs (setup.py, csrc/, kernels/) differ"),
                       ("torch", "torch differs"), ("extension", "the Python differs"),
                       ("arch_list", "TORCH_CUDA_ARCH_LIST differs")):
        if stamp.get(key) != want[key]:
            return f"{label}: prebuilt {stamp.get(key)!r}, here {want[key]!r}"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=("stamp", "use"))
    ap.add_argument("--dir", default=os.path.join(ROOT, "prebuilt"), help="the prebuilt extension's folder")
    ap.add_argument("--into", default=os.path.join(ROOT, "dp_fast"), help="where use puts the extension (the package)")
    args = ap.parse_args(argv)
    stamp_path = os.path.join(args.dir, "stamp.json")
    want = expected()
    if args.action == "stamp":
        if not os.path.exists(os.path.join(args.dir, want["extension"])):
            print(f"no {want['extension']} in {args.dir}", file=sys.stderr)
            return 1
        with open(stamp_path, "w") as f:
            json.dump(want, f, indent=1)
        print(f"stamped {args.dir}: {want}")
        return 0
    try:
        with open(stamp_path) as f:
            stamp = json.load(f)
    except (OSError, ValueError) as err:
        print(f"no usable prebuilt extension: {err}")
        return 1
    why = mismatch(stamp, want)
    if why is None and not os.path.exists(os.path.join(args.dir, want["extension"])):
        why = f"{want['extension']} is missing from {args.dir}"
    if why is not None:
        print(f"prebuilt extension not used: {why}")
        return 1
    shutil.copy2(os.path.join(args.dir, want["extension"]), os.path.join(args.into, want["extension"]))
    print(f"prebuilt extension used ({want['torch']}, {want['extension']}, TORCH_CUDA_ARCH_LIST={want['arch_list']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
