"""Build of the compiled extension ``dp_fast._C`` (csrc/*.cpp, plus kernels/*.cu in CUDA builds).

Package metadata is in pyproject.toml; this file only declares the extension. Install with
``pip install --no-build-isolation -e .`` (torch must already be installed: the extension is
compiled against it).

* CUDA build (CUDAExtension, defines WITH_CUDA) when the installed torch is a CUDA build
  (``torch.version.cuda``) and nvcc is found (CUDA_HOME, CUDA_PATH or nvcc on PATH). Target
  GPUs come from TORCH_CUDA_ARCH_LIST, default "8.0;9.0" (A100, H100) -- set it explicitly,
  else torch would pick the archs of whatever GPU happens to be visible at build time.
* CPU-only build (CppExtension) otherwise -- e.g. a CPU-only or ROCm torch
  (``torch.version.cuda is None``), or no CUDA toolkit.
* ``DP_FAST_REQUIRE_CUDA=1``: fail loudly instead of falling back to the CPU-only build.
* ``DP_FAST_NO_EXTENSION=1``: build no extension at all (pure Python; torch is not imported).
"""

from __future__ import annotations

import glob
import os
import shlex
import subprocess

from setuptools import setup

DEFAULT_CUDA_ARCH_LIST = "8.0;9.0"
ROOT = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _shared_libstdcxx() -> list[str]:
    """The shared C++ library by its full path, for the link (or nothing, where it is not found).

    On the GPU machines we are lent (2026-11), the compiler that CXX names (/opt/gcc/bin/g++,
    Ubuntu's GCC 13 underneath) linked libstdc++ statically into the extension: a private copy
    of the parts it uses, whose locale nothing initialises, so formatting the first number into an
    error message (a TORCH_CHECK that fails) crashed the process with a segmentation fault. Named
    on the link line, before the driver's own ``-lstdc++``, the shared library (the one torch
    loads) resolves every symbol and a static archive adds nothing."""
    cxx = shlex.split(os.environ.get("CXX", "c++"))
    try:
        found = subprocess.run([*cxx, "-print-file-name=libstdc++.so.6"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    path = found.stdout.strip()
    return [os.path.realpath(path)] if found.returncode == 0 and os.path.isabs(path) and os.path.exists(path) else []


def _sources(pattern: str) -> list[str]:
    # setuptools wants paths relative to this file.
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _cuda_unavailable_reason(torch, cuda_home) -> str | None:
    if torch.version.cuda is None:
        return f"the installed torch {torch.__version__} is not a CUDA build"
    if cuda_home is None:
        return "no CUDA toolkit found (set CUDA_HOME, or put nvcc on PATH)"
    if not os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
        return f"no nvcc in CUDA_HOME={cuda_home}"
    return None


def _extension_build():
    """Returns (ext_modules, cmdclass)."""
    if _env_flag("DP_FAST_NO_EXTENSION"):
        return [], {}

    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cuda_missing = _cuda_unavailable_reason(torch, CUDA_HOME)
    if cuda_missing is not None and _env_flag("DP_FAST_REQUIRE_CUDA"):
        raise RuntimeError(f"DP_FAST_REQUIRE_CUDA=1 but the CUDA kernels cannot be built: {cuda_missing}")

    common = dict(
        name="dp_fast._C",
        include_dirs=[ROOT],  # sources include "csrc/..." and "kernels/..."
        extra_link_args=_shared_libstdcxx(),
    )
    if cuda_missing is None:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)
        ext = CUDAExtension(
            sources=_sources("csrc/*.cpp") + _sources("kernels/*.cu"),
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]},
            **common,
        )
        print(f"dp_fast: building the CUDA extension for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
    else:
        ext = CppExtension(
            sources=_sources("csrc/*.cpp"),  # csrc/scheduler_step_cuda.cpp compiles to nothing without WITH_CUDA
            extra_compile_args={"cxx": ["-O3"]},
            **common,
        )
        print(f"dp_fast: building the CPU-only extension ({cuda_missing})")
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extension_build()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
