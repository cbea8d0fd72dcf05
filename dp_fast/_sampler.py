"""The sampling loop and the choice of backend.

A backend is a function ``run(policy, cond, x, n_steps, generator) -> actions`` that denoises
the initial noise ``x`` (B, H, A) under the flattened condition ``cond`` (B, C). The reference
backend is the specification: the scheduler's own ``step`` after each network call.
"""

from __future__ import annotations

import torch

BACKENDS = ("reference", "triton", "cuda")


def reference_loop(policy, cond: torch.Tensor, x: torch.Tensor, n_steps: int, generator) -> torch.Tensor:
    sched = policy.scheduler
    sched.set_timesteps(n_steps)
    step_kwargs = {"eta": policy.eta} if policy.eta else {}
    for t in sched.timesteps.tolist():
        timestep = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        model_output = policy.denoise(x, timestep, cond)
        x = sched.step(model_output, t, x, generator=generator, **step_kwargs).prev_sample
    return x


_RUNNERS = {"reference": reference_loop}


def available_backends() -> list[str]:
    """The backends this build can run, fastest first; "reference" is always there."""
    return [name for name in BACKENDS if name in _RUNNERS]


def resolve_backend(backend: str, policy):
    """The runner for ``backend``; "auto" picks the fastest available one."""
    if backend == "auto":
        return _RUNNERS[available_backends()[0]]
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend not in _RUNNERS:
        raise NotImplementedError(
            f"backend {backend!r} is not implemented in this version of dp_fast; "
            f"available: {available_backends()} (or 'auto')"
        )
    return _RUNNERS[backend]
