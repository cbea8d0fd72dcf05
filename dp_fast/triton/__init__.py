"""The Triton backend: the shared fast path (``dp_fast._fastpath``) driven by the fused Triton
``conv_block`` kernel. Selected with ``sample(backend="triton")``; ``backend="auto"`` uses it for
tensors on a CUDA GPU. On the CPU it runs only under ``TRITON_INTERPRET=1`` (set before
importing dp_fast), which the tests use."""

from __future__ import annotations

from .._fastpath import sampler_for
from .conv_block import INTERPRETED, conv_block

__all__ = ["conv_block", "run"]


def run(policy, cond, x, n_steps, generator):
    if x.device.type != "cuda" and not INTERPRETED:
        raise NotImplementedError(
            f"the triton backend runs on a CUDA GPU (tensors are on {x.device}); on the CPU only "
            "under TRITON_INTERPRET=1, set before dp_fast is imported"
        )
    return sampler_for(policy, "triton", conv_block).run(cond, x, n_steps, generator)
