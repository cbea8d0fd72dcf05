"""Loading of the compiled extension ``dp_fast._C`` (csrc/ + kernels/).

The extension is optional: the reference models, schedulers and ``sample(backend="reference")``
work without it. Importing ``dp_fast._C`` registers the ``torch.ops.dp_fast.*`` operators.
"""

from __future__ import annotations

import torch

_loaded: tuple | None = None  # (module, None) or (None, reason), once the import was tried


def _load():
    """Returns (module, None) when the extension imports, else (None, reason). The import runs
    once, eagerly (this module's import does it): torch.compile then reads the result as a
    constant instead of tracing an import and the fake kernels' registration, which it cannot."""
    global _loaded
    if _loaded is None:
        try:
            from . import _C  # noqa: F401  (registers torch.ops.dp_fast)
        except ImportError as e:
            _loaded = None, str(e)
        else:
            _register_fakes()
            _loaded = _C, None
    return _loaded


def _register_fakes() -> None:
    """Shape-only twins of the C++ operators, so torch.compile can trace through them."""

    @torch.library.register_fake("dp_fast::scheduler_step")
    def _scheduler_step_fake(model_output, sample, coefs, noise, clip_range):
        return sample.new_empty(sample.shape)  # the kernels return a new contiguous tensor

    @torch.library.register_fake("dp_fast::conv_block")
    def _conv_block_fake(x, x2, weight, bias, gn_weight, gn_bias, cond, cond_scale, residual, res_x2, res_weight,
                         res_bias, sample, noise, coefs, out, parts, counters, config, scalars, head_weight=None,
                         head_bias=None):
        return None  # writes `out` in place

    @torch.library.register_fake("dp_fast::conv_block_params")
    def _conv_block_params_fake(x, x2, weight, bias, gn_weight, gn_bias, cond, cond_scale, residual, res_x2, res_weight,
                                res_bias, sample, noise, coefs, out, parts, counters, config, scalars, head_weight=None,
                                head_bias=None):
        from . import _C

        return torch.empty(_C.conv_block_params_bytes(), dtype=torch.uint8)  # CPU bytes (CUDA builds only)

    @torch.library.register_fake("dp_fast::conv_block_chain")
    def _conv_block_chain_fake(params, device_params, barrier, grid, flags=None, probe=None):
        return None  # writes every entry's out in place


def available() -> bool:
    """True when the compiled extension is importable."""
    return _load()[0] is not None


def cuda_compiled() -> bool:
    """True when the extension was built with its CUDA kernels."""
    mod, _ = _load()
    return mod is not None and bool(mod.cuda_compiled())


def kernel_image(index: int) -> tuple[int, int]:
    """(SASS, PTX) compute capability (major * 10 + minor) of the CUDA kernels' code that runs on
    CUDA device ``index``, as the CUDA runtime reports it for one of them; a RuntimeError naming
    the CUDA error where none does (a GPU the build did not target: TORCH_CUDA_ARCH_LIST)."""
    if not cuda_compiled():
        raise RuntimeError("dp_fast's extension was built without its CUDA kernels")
    query = getattr(_load()[0], "kernel_image", None)
    if query is None:  # an editable install whose sources moved on since the build
        raise RuntimeError("dp_fast's compiled extension predates its Python sources (no kernel_image): rebuild it "
                           "(`pip install --no-build-isolation -e .`)")
    binary, ptx = query(int(index))
    return binary, ptx


def ops():
    """``torch.ops.dp_fast``; raises a RuntimeError naming the cause when the extension is absent."""
    mod, reason = _load()
    if mod is None:
        raise RuntimeError(
            "dp_fast's compiled extension is not built (import of dp_fast._C failed: "
            f"{reason}). Build it with `pip install --no-build-isolation -e .` "
            "(see README, 'Building'), or use the reference path."
        )
    return torch.ops.dp_fast


_load()
