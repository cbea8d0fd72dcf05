"""The sampling loop and the choice of backend.

A backend is a function ``run(policy, cond, x, n_steps, generator) -> actions`` that denoises
the initial noise ``x`` (B, H, A) under the flattened condition ``cond`` (B, C). The reference
backend is the specification: the scheduler's own ``step`` after each network call. A backend
that cannot serve a request (device, model) raises NotImplementedError saying why.
"""

from __future__ import annotations

import importlib.util

import torch

BACKENDS = ("reference", "triton", "cuda")
_AUTO_ORDER = ("cuda", "triton", "reference")  # fastest first


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


_RUNNERS = {"reference": reference_loop}
if importlib.util.find_spec("triton") is not None:
    _RUNNERS["triton"] = _triton_loop


def available_backends() -> list[str]:
    """The backends this installation has; "reference" is always there. Whether one serves a
    given device is decided per call (see ``resolve_backend``)."""
    return [name for name in BACKENDS if name in _RUNNERS]


def _serves(name: str, device: torch.device) -> bool:
    """Whether ``auto`` may pick backend ``name`` for tensors on ``device``: the fast backends
    only on a GPU (on the CPU, Triton runs only in its interpreter, far slower than eager)."""
    return name == "reference" or (name in _RUNNERS and device.type == "cuda")


def auto_backend(device: torch.device) -> str:
    """The backend ``backend="auto"`` picks for tensors on ``device``."""
    return next(name for name in _AUTO_ORDER if _serves(name, torch.device(device)))


def resolve_backend(backend: str, policy, device: torch.device | None = None):
    """The runner for ``backend``; "auto" picks the fastest one that serves ``device``."""
    device = torch.device(device) if device is not None else policy.device
    if backend == "auto":
        return _RUNNERS[auto_backend(device)]
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend not in _RUNNERS:
        raise NotImplementedError(
            f"backend {backend!r} is not available in this installation of dp_fast; "
            f"available: {available_backends()} (or 'auto')"
        )
    return _RUNNERS[backend]
