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


# The rule ``auto`` follows on a CUDA GPU, from the H200 measurements in bench/results/
# (2026-11-26, float32, µs per network evaluation, the second run): on Chi's PushT U-Net the
# Triton backend is the fastest at batch 1 (W2: Triton 387, CUDA 452, the PyTorch loop in one
# CUDA graph 3749; W3: Triton 731, CUDA 762, that loop 6807) and at batch 64 (W4: Triton 2049,
# CUDA 5369, that loop 4588); on the lesson's small U-Net at batch 1 the CUDA backend is (W1:
# CUDA 77 a launch per block, Triton 153, the loop 224). So: the CUDA backend first for the
# lesson's network up to AUTO_CUDA_MAX_BATCH samples (the CUDA kernel lost at batch 64 on W4;
# the lesson's network was not timed there), the Triton backend otherwise, at any batch.
AUTO_CUDA_MAX_BATCH = 8


def auto_backend(device: torch.device, batch: int = 1, model=None) -> str:
    """The backend ``backend="auto"`` picks for ``batch`` samples of ``model`` on ``device``:
    the reference on the CPU (Triton runs there only in its interpreter), else the fastest
    fast backend this installation has by the rule above."""
    from .models import LessonUNet1D

    if torch.device(device).type != "cuda":
        return "reference"
    if batch > AUTO_CUDA_MAX_BATCH:
        order = ("triton",)
    else:
        order = ("cuda", "triton") if isinstance(model, LessonUNet1D) else ("triton", "cuda")
    return next((name for name in order if name in _RUNNERS), "reference")


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
    """The runner for ``backend``; "auto" picks by ``auto_backend(device, batch, policy.model)`` and falls
    back to the reference (with a warning) where the fast backend cannot serve the request."""
    device = torch.device(device) if device is not None else policy.device
    if backend == "auto":
        name = auto_backend(device, batch, policy.model)
        return reference_loop if name == "reference" else _falling_back_to_reference(name)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend not in _RUNNERS:
        raise NotImplementedError(
            f"backend {backend!r} is not available in this installation of dp_fast; "
            f"available: {available_backends()} (or 'auto')"
        )
    return _RUNNERS[backend]
