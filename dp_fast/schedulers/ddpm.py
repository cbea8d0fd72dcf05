"""DDPM (Ho et al., 2020) with diffusers' ``DDPMScheduler`` arguments and numbers."""

from __future__ import annotations

import math

import torch

from ._common import (
    DiffusersScheduler,
    SchedulerOutput,
    as_int,
    coefficient_row,
    randn,
    x0_eps_coefficients,
)

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large")


class DDPMScheduler(DiffusersScheduler):
    """Denoising diffusion probabilistic models; the keyword arguments are diffusers'.

    ``step(model_output, t, sample, generator=None)`` adds ``sigma_t * N(0, I)`` for t > 0,
    drawn from ``generator`` after the network call, shaped like the sample.
    Supported ``variance_type``: fixed_small (Chi et al.'s and LeRobot's), fixed_small_log, fixed_large.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas=None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        if variance_type not in VARIANCE_TYPES:
            raise NotImplementedError(f"variance_type must be one of {VARIANCE_TYPES}, got {variance_type!r}")
        super().__init__(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, clip_sample,
                         clip_sample_range, steps_offset, prediction_type, thresholding, timestep_spacing, rescale_betas_zero_snr)
        self.variance_type = variance_type
        self.one = torch.tensor(1.0)

    def previous_timestep(self, t: int) -> int:
        """The timestep after ``t`` in ``.timesteps`` (-1 after the last)."""
        ts = self.timesteps.tolist()
        if t not in ts:
            raise ValueError(f"timestep {t} is not in this scheduler's timesteps {ts}")
        i = ts.index(t)
        return ts[i + 1] if i + 1 < len(ts) else -1

    def _alphas(self, t: int):
        prev_t = self.previous_timestep(t)
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        return alpha_prod_t, alpha_prod_t_prev

    def _noise_std(self, alpha_prod_t, alpha_prod_t_prev):
        """The standard deviation of the noise added at a step with t > 0."""
        current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
        if self.variance_type == "fixed_large":
            return current_beta_t**0.5
        variance = (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t
        if not torch.is_tensor(variance):  # float64 path of step_coefficients()
            return math.sqrt(max(variance, 1e-20))
        variance = variance.clamp(min=1e-20)
        if self.variance_type == "fixed_small_log":
            return torch.exp(0.5 * torch.log(variance))
        return variance**0.5

    def step(self, model_output, timestep, sample, generator=None):
        """One DDPM update. model_output, sample: (B, T, D); timestep: int (one of ``.timesteps``)."""
        t = as_int(timestep)
        alpha_prod_t, alpha_prod_t_prev = self._alphas(t)
        beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t
        if self.prediction_type == "epsilon":
            pred_original_sample = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
        elif self.prediction_type == "sample":
            pred_original_sample = model_output
        else:  # v_prediction
            pred_original_sample = alpha_prod_t**0.5 * sample - beta_prod_t**0.5 * model_output
        if self.clip_sample:
            pred_original_sample = pred_original_sample.clamp(-self.clip_sample_range, self.clip_sample_range)
        pred_original_sample_coeff = (alpha_prod_t_prev**0.5 * current_beta_t) / beta_prod_t
        current_sample_coeff = current_alpha_t**0.5 * beta_prod_t_prev / beta_prod_t
        prev_sample = pred_original_sample_coeff * pred_original_sample + current_sample_coeff * sample
        if t > 0:
            noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)
            prev_sample = prev_sample + self._noise_std(alpha_prod_t, alpha_prod_t_prev) * noise
        return SchedulerOutput(prev_sample, pred_original_sample)

    def step_coefficients(self) -> torch.Tensor:
        """(len(timesteps), 8) float64: row i is step i as the ``scheduler_step`` affine map.
        The eps terms are unused (a DDPM step needs only x0 and x)."""
        rows = []
        for t in self.timesteps.tolist():
            ab_t, ab_prev = (float(a) for a in self._alphas(t))
            current_alpha_t = ab_t / ab_prev
            c_x0 = ab_prev**0.5 * (1 - current_alpha_t) / (1 - ab_t)
            c_x = current_alpha_t**0.5 * (1 - ab_prev) / (1 - ab_t)
            std = self._noise_std(ab_t, ab_prev) if t > 0 else 0.0
            a_x, a_m, _, _ = x0_eps_coefficients(self.prediction_type, ab_t)
            rows.append(coefficient_row(a_x, a_m, 0.0, 0.0, c_x0, 0.0, c_x, std))
        return torch.tensor(rows, dtype=torch.float64)

    def noise_draws(self) -> list[bool]:
        """Per step of ``.timesteps``: whether ``step()`` draws noise (for t > 0)."""
        return [t > 0 for t in self.timesteps.tolist()]
