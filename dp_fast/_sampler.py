"""The sampling loop and the choice of backend.

A backend is a function ``run(policy, cond, x, n_steps, generator) -> actions`` that denoises
the initial noise ``x`` (B, H, A) under the flattened condition ``cond`` (B, C), writing neither
(``x`` is the caller's own ``noise``: ``sample()`` passes it without a copy). The reference
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
# (float32, µs per network evaluation). Since Triton's batch-1 blocks at horizon 16 took GEMV
# tiles (third run, 2026-11-27) the Triton backend is the fastest on both networks at batch 1:
# W1 (the lesson's U-Net) Triton 73, CUDA 124 in the same call (the CUDA backend's best on that
# workload, 77 in the second run, still slower); W2 (Chi's PushT U-Net) Triton 358, CUDA 463;
# W3 (the image U-Net) Triton 595, CUDA 771. At batch 64 (W4, second run) Triton 2049, the
# PyTorch loop in one CUDA graph 4588, CUDA 5369. So: the Triton backend first at any batch,
# then the CUDA backend up to AUTO_CUDA_MAX_BATCH samples (beyond, it lost even to that loop).
# The H100's run (fourth, 2026-11-27, one call) agrees: W1 Triton 76 (one chunk ahead in its
# GEMV loops, the default since) and 95 (two), CUDA 93; W2 324 against 517; W3 676 against 906;
# W4 2130 against 5434.
AUTO_CUDA_MAX_BATCH = 8


def auto_backend(device: torch.device, batch: int = 1, model=None) -> str:
    """The backend ``backend="auto"`` picks for ``batch`` samples of ``model`` on ``device``:
    the reference on the CPU (Triton runs there only in its interpreter), else the fastest
    fast backend this installation has by the rule above (which, since 2026-11-27, is the same
    for both networks; ``model`` stays for rules that tell them apart)."""
    if torch.device(device).type != "cuda":
        return "reference"
    order = ("triton",) if batch > AUTO_CUDA_MAX_BATCH else ("triton", "cuda")
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
