"""The lesson's 1D U-Net (``ConditionalUNet1D`` in the lesson), layer for layer.

Parameter names are the lesson's (``time_embed``, ``obs_embed``, ``down1``, ``down2``, ``mid``,
``up2``, ``up1``), so a state_dict saved from the lesson's class loads with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class LessonUNet1D(nn.Module):
    """Two-level 1D U-Net with SiLU, no normalisation, and an additive time + observation condition.

    forward(noisy_actions (B, H, action_dim), timestep (B,) int64 in [0, diffusion_steps),
    obs (B, obs_dim)) -> predicted noise (B, H, action_dim). H must be even.
    """

    def __init__(self, action_dim: int, obs_dim: int, hidden: int = 256, diffusion_steps: int = 100):
        super().__init__()
        self.action_dim, self.obs_dim, self.hidden = action_dim, obs_dim, hidden
        self.diffusion_steps = diffusion_steps
        self.time_embed = nn.Sequential(
            nn.Embedding(diffusion_steps, hidden),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
        )
        self.obs_embed = nn.Sequential(
            nn.Linear(obs_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
        )
        self.down1 = nn.Sequential(
            nn.Conv1d(action_dim, hidden, 3, padding=1),
            nn.SiLU(),
            nn.Conv1d(hidden, hidden, 3, padding=1),
            nn.SiLU(),
        )
        self.down2 = nn.Sequential(
            nn.Conv1d(hidden, hidden, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv1d(hidden, hidden, 3, padding=1),
            nn.SiLU(),
        )
        self.mid = nn.Sequential(
            nn.Conv1d(hidden, hidden, 3, padding=1),
            nn.SiLU(),
        )
        self.up2 = nn.Sequential(
            nn.ConvTranspose1d(hidden * 2, hidden, 4, stride=2, padding=1),
            nn.SiLU(),
        )
        self.up1 = nn.Sequential(
            nn.Conv1d(hidden * 2, hidden, 3, padding=1),
            nn.SiLU(),
            nn.Conv1d(hidden, action_dim, 3, padding=1),
        )

    def forward(self, noisy_actions: torch.Tensor, timestep: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        x = noisy_actions.permute(0, 2, 1)  # (B, A, H)
        cond = (self.time_embed(timestep) + self.obs_embed(obs)).unsqueeze(-1)  # (B, hidden, 1)
        h1 = self.down1(x) + cond  # (B, hidden, H)
        h2 = self.down2(h1)  # (B, hidden, H/2)
        h = self.mid(h2) + cond[:, :, :1].expand_as(h2)
        h = self.up2(torch.cat([h, h2], dim=1))  # (B, hidden, H)
        h = self.up1(torch.cat([h, h1], dim=1))  # (B, A, H)
        return h.permute(0, 2, 1)
