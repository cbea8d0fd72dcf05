"""Builds tests/emulation/conv_block_cpu.cpp (kernels/conv_block.cu run on the CPU) once per
test session, with the host compiler and the CUDA toolkit's headers (no GPU, no nvcc)."""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import pathlib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE = os.path.join(ROOT, "tests", "emulation", "conv_block_cpu.cpp")
INCLUDED = ["kernels/conv_block.cu", "kernels/conv_block.cuh", "kernels/scheduler_step_math.h", "csrc/conv_block_params.h"]


def cuda_include_dirs() -> list[str]:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    dirs = [os.path.join(home, "include"), os.path.join(home, "include", "cccl")]
    dirs += glob.glob(os.path.join(home, "targets", "*", "include", "cccl"))
    return [d for d in dirs if os.path.isdir(d)]


def available() -> bool:
    """The CUDA headers the kernel's source includes (cuda_bf16.h, libcu++'s cuda/atomic) exist."""
    dirs = cuda_include_dirs()
    return any(os.path.exists(os.path.join(d, "cuda_bf16.h")) for d in dirs) and any(
        os.path.exists(os.path.join(d, "cuda", "atomic")) for d in dirs)


def conv_block():
    """The emulated kernel, with the signature of torch.ops.dp_fast.conv_block (CPU tensors).
    Where it does not build (an old host compiler, say), the calling test skips with the
    compiler's complaint, unless DP_FAST_REQUIRE_CUDA=1 (CI), where it fails."""
    module = _module()
    return lambda *args: module.launch(module.conv_block_params(*args))


def conv_block_params():
    """The emulated torch.ops.dp_fast.conv_block_params (CPU tensors)."""
    return _module().conv_block_params


def conv_block_chain():
    """The emulated torch.ops.dp_fast.conv_block_chain: the chain kernel on a grid of one CTA."""
    return _module().conv_block_chain


def grid_barrier_check(ctas: int, rounds: int, start: int = 0) -> tuple[int, int]:
    """The chain's grid barrier between `ctas` concurrent threads (one per CTA), `rounds` times on
    a word starting at `start`: (slots read behind their round, the word's final value)."""
    stale, word = _module().grid_barrier_check(ctas, rounds, start)
    return stale, word


def last_chain_barrier_free() -> bool:
    """Whether the last emulated chain launch ran without grid barriers (its operator's verdict:
    every entry staged, writing its flagged slot, and reading what earlier entries wrote there)."""
    return _module().last_chain_barrier_free()


def flag_exchange_check(ctas: int, rounds: int) -> int:
    """The chain's flagged exchange between `ctas` concurrent threads (one per CTA), `rounds`
    rounds without a barrier: the number of values read wrong."""
    return _module().flag_exchange_check(ctas, rounds)


def region_arrival_check(ctas: int, rounds: int) -> tuple[int, int, int]:
    """The split finish's arrival between `ctas` concurrent threads (one per CTA), `rounds` times:
    (partials the last CTA read behind their round, CTAs that arrived last, the counter's final
    value)."""
    stale, lasts, counter = _module().region_arrival_check(ctas, rounds)
    return stale, lasts, counter


def last_prefetches() -> list[int]:
    """The addresses the last emulated launch asked L2 to prefetch (every one already checked
    to be a line of the weights)."""
    return _module().last_prefetches()


def last_copies() -> list[int]:
    """The source addresses of the last emulated launch's cp.async copies of 16 bytes (the weight
    ring's; every one already checked to lie inside the weights)."""
    return _module().last_copies()


def _module():
    import pytest

    built = _build()
    if isinstance(built, Exception):
        if os.environ.get("DP_FAST_REQUIRE_CUDA", "") == "1":
            raise built
        pytest.skip(f"the CUDA kernel's CPU emulation did not build here: {str(built)[-500:]}")
    return built


def skip_unless_available():
    """The mark for tests of the emulated kernel: they run on machines without a GPU (with one,
    the real kernel is tested) that have the CUDA headers."""
    import pytest
    import torch

    return pytest.mark.skipif(torch.cuda.is_available() or not available(), reason="on machines without a GPU, with the CUDA headers")


@functools.cache
def _build():
    """The built module, or the exception the build raised (kept, so it is tried once)."""
    try:
        return _compile()
    except Exception as e:  # noqa: BLE001 - any build failure is reported by conv_block()
        return e


def _compile():
    from torch.utils import cpp_extension

    # torch rebuilds a JIT extension when its listed sources or flags change; the kernel comes in
    # through #include, so a digest of those files goes into the flags.
    digest = hashlib.sha256(b"".join(pathlib.Path(ROOT, f).read_bytes() for f in INCLUDED)).hexdigest()[:16]
    # DP_FAST_EMULATION_SANITIZE=thread: built with ThreadSanitizer, a module of its own (the
    # process must start with the sanitizer's runtime preloaded: tests/emulation/racecheck.sh).
    sanitize = os.environ.get("DP_FAST_EMULATION_SANITIZE", "").strip()
    flags = [f"-fsanitize={sanitize}", "-g"] if sanitize else []
    module = cpp_extension.load(
        name="dp_fast_conv_block_emulated" + (f"_{sanitize}" if sanitize else ""), sources=[SOURCE],
        extra_include_paths=[ROOT, *cuda_include_dirs()],
        extra_cflags=["-O1", "-std=c++20", "-Wno-unknown-pragmas", f"-DDP_FAST_KERNEL_DIGEST={digest}", *flags],
        extra_ldflags=flags, verbose=False)
    return module
