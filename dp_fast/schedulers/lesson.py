"""The lesson's sampler, reproduced exactly: linear betas, DDIM with eta = 0 over
``linspace(T - 1, 0, n_steps)`` (truncated to integers), no clipping, epsilon prediction.

``n_steps`` counts the *points* of that linspace, so a ``sample(obs, n_steps)`` runs
``n_steps - 1`` network evaluations and ends at timestep 0 (not at x0), as the lesson does.
"""

from __future__ import annotations

import math

import torch

from ._common import SchedulerOutput, add_noise, as_int, coefficient_row, make_betas, x0_eps_coefficients


class LessonDDIMScheduler:
    """The lesson's DDIM. ``set_timesteps(n_steps)`` makes ``.timesteps`` the ``n_steps - 1``
    timesteps the network is evaluated at; ``step()`` moves to the next point of the linspace."""

    prediction_type = "epsilon"
    clip_range = math.inf

    def __init__(self, num_train_timesteps: int = 100, beta_start: float = 1e-4, beta_end: float = 0.02):
        self.num_train_timesteps = int(num_train_timesteps)
        self.betas = make_betas(self.num_train_timesteps, beta_start, beta_end, "linear")
        self.alphas_cumprod = torch.cumprod(1 - self.betas, 0)  # the lesson's alpha_bars
        self.num_inference_steps = None
        self.timesteps = torch.empty(0, dtype=torch.int64)
        self._prev = {}

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        n = int(num_inference_steps)
        if not 2 <= n <= self.num_train_timesteps:
            raise ValueError(
                f"the lesson's sampler needs 2 <= n_steps <= {self.num_train_timesteps} "
                f"(n_steps points, n_steps - 1 evaluations), got {n}"
            )
        points = torch.linspace(self.num_train_timesteps - 1, 0, n, dtype=torch.long)
        self.num_inference_steps = n
        self.timesteps = points[:-1].to(device)
        self._prev = dict(zip(points[:-1].tolist(), points[1:].tolist()))

    def _alphas(self, t: int):
        if t not in self._prev:
            raise ValueError(f"timestep {t} is not in this scheduler's timesteps {self.timesteps.tolist()}")
        return self.alphas_cumprod[t], self.alphas_cumprod[self._prev[t]]

    def step(self, model_output, timestep, sample, generator=None):
        """The lesson's update, in its own operation order. model_output, sample: (B, H, A)."""
        ab, ab_prev = self._alphas(as_int(timestep))
        x0_pred = (sample - torch.sqrt(1 - ab) * model_output) / torch.sqrt(ab)
        prev = torch.sqrt(ab_prev) * x0_pred + torch.sqrt(1 - ab_prev) * model_output
        return SchedulerOutput(prev, x0_pred)

    def add_noise(self, original_samples, noise, timesteps):
        """The lesson's training noise: sqrt(abar_k) * a0 + sqrt(1 - abar_k) * noise."""
        return add_noise(self.alphas_cumprod, original_samples, noise, timesteps)

    def step_coefficients(self) -> torch.Tensor:
        """(len(timesteps), 8) float64: row i is step i as the ``scheduler_step`` affine map."""
        rows = []
        for t in self.timesteps.tolist():
            ab, ab_prev = (float(a) for a in self._alphas(t))
            a_x, a_m, b_x, b_m = x0_eps_coefficients("epsilon", ab)
            rows.append(coefficient_row(a_x, a_m, b_x, b_m, math.sqrt(ab_prev), math.sqrt(1 - ab_prev), 0.0, 0.0))
        return torch.tensor(rows, dtype=torch.float64)

    def noise_draws(self) -> list[bool]:
        """Per step of ``.timesteps``: whether ``step()`` draws noise (never: eta = 0)."""
        return [False] * len(self.timesteps)
