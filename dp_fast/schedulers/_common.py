"""What the DDPM, DDIM and lesson schedulers share: beta schedules, the step output, noise."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..ops import scheduler_step as _ss

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclass
class SchedulerOutput:
    """What ``step()`` returns, as diffusers does: the next sample and the predicted x0."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas=None) -> torch.Tensor:
    """float32 betas, (num_train_timesteps,), computed as diffusers computes them."""
    if trained_betas is not None:
        return torch.tensor(trained_betas, dtype=torch.float32)
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        # Nichol & Dhariwal (2021), eq. 17, in Python floats, each beta capped at 0.999.
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        n = num_train_timesteps
        betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
        return torch.tensor(betas, dtype=torch.float32)
    raise NotImplementedError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")


def check_config(prediction_type, thresholding, timestep_spacing, rescale_betas_zero_snr, num_train_timesteps):
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if thresholding:
        raise NotImplementedError("thresholding=True (dynamic thresholding) is not supported; use clip_sample")
    if timestep_spacing != "leading":
        raise NotImplementedError(f"only timestep_spacing='leading' is supported, got {timestep_spacing!r}")
    if rescale_betas_zero_snr:
        raise NotImplementedError("rescale_betas_zero_snr=True is not supported")
    if int(num_train_timesteps) < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")


def leading_timesteps(num_train_timesteps: int, n: int, steps_offset: int) -> torch.Tensor:
    """'leading' spacing: arange(n) * (T // n), reversed, plus steps_offset; int64, (n,)."""
    if not 1 <= n <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must be in [1, {num_train_timesteps}], got {n}")
    step_ratio = num_train_timesteps // n
    return torch.arange(n - 1, -1, -1, dtype=torch.int64) * step_ratio + steps_offset


def randn(shape, generator, device, dtype) -> torch.Tensor:
    """Standard normal noise as diffusers' ``randn_tensor`` draws it: a CPU generator draws on
    the CPU and the result moves to ``device``, so a seed gives the same numbers everywhere."""
    rand_device = device
    if generator is not None:
        if generator.device.type == "cpu":
            rand_device = torch.device("cpu")
        elif generator.device.type != torch.device(device).type:
            raise ValueError(f"a {generator.device.type} generator cannot make a tensor on {device}")
    return torch.randn(shape, generator=generator, device=rand_device, dtype=dtype).to(device)


def randn_rows(out: torch.Tensor, rows, generator) -> None:
    """out[i] for each i of ``rows`` (ascending), in that order, filled with the standard normal
    noise ``randn(out[i].shape, generator, out.device, out.dtype)`` would draw: the same numbers,
    from the same draws of the same generator, with fewer operations. A CPU generator's rows are
    drawn on the CPU and copied to ``out`` at once, where each would be its own copy to the GPU
    (which waits for the GPU); another generator's, or the global RNG's (generator None), are
    drawn straight into ``out``, without a copy. The other rows of ``out`` are left as they are."""
    rows = list(rows)
    if not rows:
        return
    shape = out.shape[1:]
    if generator is not None and generator.device.type == "cpu":
        drawn = torch.stack([torch.randn(shape, generator=generator, dtype=out.dtype) for _ in rows])
        if rows == list(range(rows[0], rows[-1] + 1)):
            out[rows[0]:rows[-1] + 1].copy_(drawn)
        else:
            out[torch.tensor(rows, device=out.device)] = drawn.to(out.device)
        return
    if generator is not None and generator.device.type != out.device.type:
        raise ValueError(f"a {generator.device.type} generator cannot make a tensor on {out.device}")
    for i in rows:
        torch.randn(shape, generator=generator, out=out[i])


def as_int(t) -> int:
    return int(t.item()) if torch.is_tensor(t) else int(t)


def x0_eps_coefficients(prediction_type: str, alpha_prod_t: float):
    """(a_x, a_m, b_x, b_m): x0 = a_x*x + a_m*m and eps = b_x*x + b_m*m for a network output m."""
    sa, sb = math.sqrt(alpha_prod_t), math.sqrt(1.0 - alpha_prod_t)
    if prediction_type == "epsilon":
        return 1.0 / sa, -sb / sa, 0.0, 1.0
    if prediction_type == "sample":
        return 0.0, 1.0, 1.0 / sb, -sa / sb
    return sa, -sb, sb, sa  # v_prediction


def coefficient_row(a_x, a_m, b_x, b_m, c_x0, c_eps, c_x, sigma) -> list:
    """One row of a step-coefficient table, laid out as ``dp_fast.ops.scheduler_step`` reads it."""
    row = [0.0] * _ss.NUM_COEFS
    row[_ss.COEF_X0_FROM_SAMPLE], row[_ss.COEF_X0_FROM_OUTPUT] = a_x, a_m
    row[_ss.COEF_EPS_FROM_SAMPLE], row[_ss.COEF_EPS_FROM_OUTPUT] = b_x, b_m
    row[_ss.COEF_PREV_FROM_X0], row[_ss.COEF_PREV_FROM_EPS] = c_x0, c_eps
    row[_ss.COEF_PREV_FROM_SAMPLE], row[_ss.COEF_NOISE_STD] = c_x, sigma
    return row


def add_noise(alphas_cumprod, original_samples, noise, timesteps):
    """sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise, as diffusers' ``add_noise``; timesteps: (B,) int."""
    ab = alphas_cumprod.to(device=original_samples.device, dtype=original_samples.dtype)[timesteps.to(original_samples.device)]
    ab = ab.reshape(-1, *([1] * (original_samples.dim() - 1)))
    return ab**0.5 * original_samples + (1 - ab) ** 0.5 * noise


class DiffusersScheduler:
    """What diffusers' DDPM and DDIM share: the noise schedule, "leading" timesteps,
    ``add_noise`` and the clip bound. Subclasses give ``step`` and ``step_coefficients``."""

    def __init__(self, num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, clip_sample,
                 clip_sample_range, steps_offset, prediction_type, thresholding, timestep_spacing, rescale_betas_zero_snr):
        check_config(prediction_type, thresholding, timestep_spacing, rescale_betas_zero_snr, num_train_timesteps)
        self.num_train_timesteps = int(num_train_timesteps)
        self.clip_sample = bool(clip_sample)
        self.clip_sample_range = float(clip_sample_range)
        self.steps_offset = int(steps_offset)
        self.prediction_type = prediction_type
        self.betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.num_inference_steps = None
        self.timesteps = torch.arange(self.num_train_timesteps - 1, -1, -1, dtype=torch.int64)

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        self.num_inference_steps = int(num_inference_steps)
        self.timesteps = leading_timesteps(self.num_train_timesteps, self.num_inference_steps, self.steps_offset)
        self.timesteps = self.timesteps.to(device)

    def add_noise(self, original_samples, noise, timesteps):
        """q(x_t | x_0): sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise; timesteps: (B,) int."""
        return add_noise(self.alphas_cumprod, original_samples, noise, timesteps)

    @property
    def clip_range(self) -> float:
        """The x0 clamp bound that ``step_coefficients()`` rows are used with (inf: none)."""
        return self.clip_sample_range if self.clip_sample else math.inf
