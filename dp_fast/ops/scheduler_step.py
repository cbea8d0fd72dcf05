"""scheduler_step: one DDIM/DDPM update of a whole action chunk from a coefficient row.

Every sampler dp_fast supports (the lesson's DDIM, diffusers' DDIM with any eta, DDPM with
fixed variances; epsilon, sample and v prediction; with or without clip_sample) is, for one
step, the same affine map of the network output ``m`` and the current sample ``x``::

    x0   = clip(a_x * x + a_m * m)          # predicted clean chunk, clipped to +-clip_range
    eps  = b_x * x + b_m * m                # predicted noise (from the *unclipped* x0)
    prev = c_x0 * x0 + c_eps * eps + c_x * x + sigma * noise

The eight numbers of one step are a row of the table that ``Scheduler.step_coefficients()``
builds once per ``set_timesteps``; the row layout is given by the ``COEF_*`` indices below and
is shared with the C++ (``csrc/scheduler_step.cpp``) and CUDA (``kernels/scheduler_step.cu``)
kernels. ``scheduler_step_ref`` is the plain PyTorch twin of those kernels; the schedulers in
``dp_fast.schedulers`` are the specification both are tested against.
"""

from __future__ import annotations

import math

import torch

from .. import _ext

COEF_X0_FROM_SAMPLE = 0  # a_x
COEF_X0_FROM_OUTPUT = 1  # a_m
COEF_EPS_FROM_SAMPLE = 2  # b_x
COEF_EPS_FROM_OUTPUT = 3  # b_m
COEF_PREV_FROM_X0 = 4  # c_x0
COEF_PREV_FROM_EPS = 5  # c_eps
COEF_PREV_FROM_SAMPLE = 6  # c_x
COEF_NOISE_STD = 7  # sigma
NUM_COEFS = 8

_KERNEL_DTYPES = (torch.float32, torch.float64)


def scheduler_step_ref(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    coefs: torch.Tensor,
    noise: torch.Tensor | None = None,
    clip_range: float = math.inf,
) -> torch.Tensor:
    """Plain PyTorch scheduler step.

    model_output, sample: (B, T, D) (any shape, the same for both), float.
    coefs: (8,) float64, one row of ``Scheduler.step_coefficients()``.
    noise: like ``sample``, or None when the row's sigma is 0.
    clip_range: x0 is clamped to [-clip_range, clip_range]; ``math.inf`` disables clipping.
    Returns the previous (less noisy) sample, shaped and typed like ``sample``.
    """
    c = [float(v) for v in coefs.tolist()]
    x, m = sample, model_output
    x0 = (c[COEF_X0_FROM_SAMPLE] * x + c[COEF_X0_FROM_OUTPUT] * m).clamp(-clip_range, clip_range)
    eps = c[COEF_EPS_FROM_SAMPLE] * x + c[COEF_EPS_FROM_OUTPUT] * m
    prev = c[COEF_PREV_FROM_X0] * x0 + c[COEF_PREV_FROM_EPS] * eps + c[COEF_PREV_FROM_SAMPLE] * x
    if c[COEF_NOISE_STD] != 0.0:
        if noise is None:
            raise ValueError("scheduler_step: this step adds noise (sigma != 0) but noise is None")
        prev = prev + c[COEF_NOISE_STD] * noise
    return prev


def scheduler_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    coefs: torch.Tensor,
    noise: torch.Tensor | None = None,
    clip_range: float = math.inf,
) -> torch.Tensor:
    """The compiled scheduler step (C++ on the CPU, CUDA on the GPU); same contract as
    ``scheduler_step_ref``. ``coefs`` may live on the CPU or on ``sample``'s device.

    Raises RuntimeError when the extension is not built (see README, "Building").
    """
    _check_step_inputs(model_output, sample, coefs, noise, clip_range)
    ops = _ext.ops()
    coefs = coefs.to(device=sample.device, dtype=torch.float64)
    return ops.scheduler_step(model_output, sample, coefs, noise, float(clip_range))


def _check_step_inputs(model_output, sample, coefs, noise, clip_range) -> None:
    if sample.dtype not in _KERNEL_DTYPES:
        raise TypeError(f"scheduler_step: sample must be float32 or float64, got {sample.dtype}")
    for name, t in (("model_output", model_output), ("noise", noise)):
        if t is None:
            continue
        if t.shape != sample.shape or t.dtype != sample.dtype or t.device != sample.device:
            raise ValueError(
                f"scheduler_step: {name} must match sample (shape {tuple(sample.shape)}, "
                f"{sample.dtype}, {sample.device}); got {tuple(t.shape)}, {t.dtype}, {t.device}"
            )
    if coefs.shape != (NUM_COEFS,):
        raise ValueError(f"scheduler_step: coefs must have shape ({NUM_COEFS},), got {tuple(coefs.shape)}")
    if noise is None and coefs.device.type == "cpu" and float(coefs[COEF_NOISE_STD]) != 0.0:
        # Checked here, where it costs no device sync; on the GPU a row that adds noise
        # without any turns the whole output into NaN (see kernels/scheduler_step.cu).
        raise ValueError("scheduler_step: this step adds noise (sigma != 0) but noise is None")
    if not clip_range > 0:
        raise ValueError(f"scheduler_step: clip_range must be > 0 (math.inf for no clipping), got {clip_range}")
