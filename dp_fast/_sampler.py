"""The sampling loop and the choice of backend.

A backend is a function ``run(policy, cond, x, n_steps, generator) -> actions`` that denoises
the initial noise ``x`` (B, H, A) under the flattened condition ``cond`` (B, C). The reference
backend is the specification: the scheduler's own ``step`` after each network call. A backend
that cannot serve a request (device, model) raises NotImplementedError saying why.
"""

from __future__ import annotations

import importlib.util
import warnings

import torch

from . import _ext

BACKENDS = ("reference", "triton", "cuda")


def reference_loop(policy, cond: torch.Tensor, x: torch.Tensor, n_steps: int, generator) -> torch.Tensor:
    sched = policy.scheduler
    sched.set_timesteps(n_steps)
    for t in sched.timesteps.tolist():
        timestep = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        model_output = policy.denoise(x, timestep, cond)
        x = sched.step(model_output, t, x, generator=generator, **policy.step_kwargs).prev_sample
    return x


def _triton_loop(policy, cond, x, n_steps, generator):
    from . import triton as backend  # imports triton itself only when first asked for

    return backend.run(policy, cond, x, n_steps, generator)


def _cuda_loop(policy, cond, x, n_steps, generator, **kwargs):
    from . import cuda as backend

    return backend.run(policy, cond, x, n_steps, generator, **kwargs)  # kwargs: chain (the benchmark's cuda-chain)


_RUNNERS = {"reference": reference_loop}
if importlib.util.find_spec("triton") is not None:
    _RUNNERS["triton"] = _triton_loop
if _ext.cuda_compiled():
    _RUNNERS["cuda"] = _cuda_loop


def available_backends() -> list[str]:
    """The backends this installation has; "reference" is always there. Whether one serves a
    given device is decided per call (see ``resolve_backend``)."""
    return [name for name in BACKENDS if name in _RUNNERS]


# The rule ``auto`` follows on a CUDA GPU, from the H100 measurements in bench/results/
# (2026-11-25): at batch 1 the Triton backend is the fastest of all (2.1-3.5x the PyTorch loop
# in one CUDA graph on W1-W3), the CUDA backend second; at batch 64 (W4) PyTorch's own
# convolutions beat both fused backends, whose float32 products ran on the CUDA cores (Triton's
# tensor-core tiles for large batches came later and are not timed yet). Batches up to
# AUTO_FAST_MAX_BATCH take the fast path; the threshold lies between the measured batches 1
# and 64 and is not itself measured.
AUTO_FAST_MAX_BATCH = 8
_AUTO_FAST_ORDER = ("triton", "cuda")


def auto_backend(device: torch.device, batch: int = 1) -> str:
    """The backend ``backend="auto"`` picks for ``batch`` samples on ``device``: the reference
    on the CPU (Triton runs there only in its interpreter) and for large batches, else the
    first fast backend this installation has."""
    device = torch.device(device)
    if device.type == "cuda" and batch <= AUTO_FAST_MAX_BATCH:
        for name in _AUTO_FAST_ORDER:
            if name in _RUNNERS:
                return name
    return "reference"


def _falling_back_to_reference(name: str):
    """``auto``'s runner for fast backend ``name``: a request it cannot serve (a model or shape
    it does not take, which it says before drawing any noise) goes to the reference, with a warning."""
    fast = _RUNNERS[name]

    def run(policy, cond, x, n_steps, generator):
        try:
            return fast(policy, cond, x, n_steps, generator)
        except NotImplementedError as err:
            warnings.warn(f"backend='auto': the {name} backend cannot serve this request ({err}); using the reference", stacklevel=3)
            return reference_loop(policy, cond, x, n_steps, generator)

    return run


def resolve_backend(backend: str, policy, device: torch.device | None = None, batch: int = 1):
    """The runner for ``backend``; "auto" picks by ``auto_backend(device, batch)`` and falls
    back to the reference (with a warning) where the fast backend cannot serve the request."""
    device = torch.device(device) if device is not None else policy.device
    if backend == "auto":
        name = auto_backend(device, batch)
        return reference_loop if name == "reference" else _falling_back_to_reference(name)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend not in _RUNNERS:
        raise NotImplementedError(
            f"backend {backend!r} is not available in this installation of dp_fast; "
            f"available: {available_backends()} (or 'auto')"
        )
    return _RUNNERS[backend]
