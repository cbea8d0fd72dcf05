"""The CUDA backend: the shared fast path (``dp_fast._fastpath``) driven by the hand-written
fused kernel of kernels/conv_block.cu. Selected with ``sample(backend="cuda")``; needs the
extension built with its CUDA kernels (``dp_fast._ext.cuda_compiled()``) and tensors on a
CUDA GPU."""

from __future__ import annotations

from .. import _ext
from .._fastpath import sampler_for
from .conv_block import conv_block

__all__ = ["conv_block", "run"]


def run(policy, cond, x, n_steps, generator):
    if not _ext.cuda_compiled():
        raise NotImplementedError(
            "the cuda backend needs dp_fast's extension built with its CUDA kernels "
            "(a CUDA build of torch and nvcc at install time; see README, 'Building')"
        )
    if x.device.type != "cuda":
        raise NotImplementedError(f"the cuda backend runs on a CUDA GPU (tensors are on {x.device})")
    return sampler_for(policy, "cuda", conv_block).run(cond, x, n_steps, generator)
