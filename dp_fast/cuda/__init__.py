"""The CUDA backend: the shared fast path (``dp_fast._fastpath``) driven by the hand-written
fused kernel of kernels/conv_block.cu. Selected with ``sample(backend="cuda")``; needs the
extension built with its CUDA kernels (``dp_fast._ext.cuda_compiled()``) and tensors on a
CUDA GPU. One launch per block by default; with DP_FAST_CUDA_CHAIN=1 (or ``chain=True``) the
whole sampling loop is one launch of the chain kernel (``conv_block.ChainRecorder``) where every
block's plan fits it (T <= 16), otherwise one launch per block (the chain was slower on the
H200 for both networks: bench/results/README.md)."""

from __future__ import annotations

import functools

import torch

from .. import _ext
from .._fastpath import sampler_for
from . import conv_block as _conv_block_module
from .conv_block import ChainRecorder, conv_block

__all__ = ["conv_block", "run", "unsupported_device"]


@functools.lru_cache(maxsize=None)
def unsupported_device(index: int) -> str | None:
    """Why this build's CUDA kernels cannot run on CUDA device ``index``, or None where they can:
    a GPU of an architecture the build did not target (TORCH_CUDA_ARCH_LIST, default 8.0 and 9.0:
    a Blackwell GPU, compute capability 10.0 or 12.0, or a Turing one, 7.5), whose first launch
    would fail inside the capture."""
    try:
        _ext.kernel_image(index)
    except RuntimeError as err:
        name, (major, minor) = torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index)
        return (f"dp_fast's CUDA kernels have no code for cuda:{index} ({name}, compute capability {major}.{minor}): {err}; "
                f'rebuild the extension with TORCH_CUDA_ARCH_LIST="{major}.{minor}" (README, "Building"), or use the triton backend')
    return None


def run(policy, cond, x, n_steps, generator, chain: bool | None = None):
    """The CUDA backend's sampler; ``chain``: the whole loop as one chain launch (None: as
    DP_FAST_CUDA_CHAIN says: ``conv_block.CHAIN``)."""
    if not _ext.cuda_compiled():
        raise NotImplementedError(
            "the cuda backend needs dp_fast's extension built with its CUDA kernels "
            "(a CUDA build of torch and nvcc at install time; see README, 'Building')"
        )
    if x.device.type != "cuda":
        raise NotImplementedError(f"the cuda backend runs on a CUDA GPU (tensors are on {x.device})")
    problem = unsupported_device(x.device.index if x.device.index is not None else torch.cuda.current_device())
    if problem is not None:
        raise NotImplementedError(problem)
    recorder = ChainRecorder if (_conv_block_module.CHAIN if chain is None else chain) else None
    return sampler_for(policy, "cuda", conv_block, recorder).run(cond, x, n_steps, generator)
