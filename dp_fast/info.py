"""``dp-fast info``: what this installation of dp_fast has and would do, for a bug report or a
first check on a new machine: the versions, whether the compiled extension was built (with its
CUDA kernels, and if not why), the backends it has, and for every device whether the CUDA
kernels have code for it and which backend ``backend="auto"`` would pick there.

    dp-fast info            a table for people
    dp-fast info --json     the same as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

from . import __version__, _ext, _sampler

AUTO_BATCHES = (1, 64)  # W1-W3's and W4's batch sizes (SPEC.md)


def _triton() -> dict:
    try:
        import triton
    except ImportError as err:
        return {"version": None, "why_not": str(err)}
    interpreted = os.environ.get("TRITON_INTERPRET", "") not in ("", "0")
    return {"version": triton.__version__, "interpreter": interpreted}


def _extension() -> dict:
    module, reason = _ext._load()
    if module is None:
        return {"built": False, "cuda_kernels": False, "why_not": reason}
    return {"built": True, "cuda_kernels": _ext.cuda_compiled()}


def _cuda_device(index: int) -> dict:
    props = torch.cuda.get_device_properties(index)
    entry = {
        "device": f"cuda:{index}",
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "sms": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
    }
    if _ext.cuda_compiled():
        from .cuda import unsupported_device

        problem = unsupported_device(index)
        if problem is None:
            binary, ptx = _ext.kernel_image(index)
            entry["cuda_kernels"] = f"sm_{binary} code (PTX {ptx})"
        else:
            entry["cuda_kernels"] = problem
    return entry


def collect() -> dict:
    """Everything ``dp-fast info`` prints, as a dict (its ``--json``)."""
    devices = [{"device": "cpu", "name": platform.processor() or platform.machine()}]
    if torch.cuda.is_available():
        devices += [_cuda_device(i) for i in range(torch.cuda.device_count())]
    for entry in devices:
        entry["auto"] = {str(b): _sampler.auto_backend(torch.device(entry["device"]), b) for b in AUTO_BATCHES}
    return {
        "dp_fast": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _triton(),
        "extension": _extension(),
        "backends": _sampler.available_backends(),
        "devices": devices,
    }


def render(info: dict) -> str:
    """``collect()``'s dict as the text ``dp-fast info`` prints."""
    triton, ext = info["triton"], info["extension"]
    if triton["version"] is None:
        triton_line = f"not installed ({triton['why_not']})"
    else:
        triton_line = triton["version"] + (" (its CPU interpreter: TRITON_INTERPRET is set)" if triton["interpreter"] else "")
    if not ext["built"]:
        ext_line = f"not built ({ext['why_not']}): the reference backend only"
    else:
        ext_line = "built with its CUDA kernels" if ext["cuda_kernels"] else "built without its CUDA kernels (CPU-only)"
    lines = [
        f"dp_fast     {info['dp_fast']}",
        f"python      {info['python']} ({info['platform']})",
        f"torch       {info['torch']}" + (f" (CUDA {info['torch_cuda']})" if info["torch_cuda"] else " (no CUDA)"),
        f"triton      {triton_line}",
        f"dp_fast._C  {ext_line}",
        f"backends    {', '.join(info['backends'])}",
        "devices",
    ]
    for d in info["devices"]:
        auto = ", ".join(f"{name} at batch {b}" for b, name in d["auto"].items())
        if d["device"] == "cpu":
            lines.append(f"  cpu     {d['name']}; auto: {auto}")
            continue
        lines.append(f"  {d['device']:<7} {d['name']}, compute capability {d['compute_capability']}, {d['sms']} SMs, "
                     f"{d['memory_gib']} GiB; auto: {auto}")
        if "cuda_kernels" in d:
            lines.append(f"          CUDA kernels: {d['cuda_kernels']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dp-fast info", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    info = collect()
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
