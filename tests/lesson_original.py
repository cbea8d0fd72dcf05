"""The lesson's code, verbatim (shared/seed/diffusion-policy-lesson.txt, "Implementation"):
the independent ground truth that dp_fast's LessonUNet1D and lesson sampler are checked against.
Only the module docstring and this note are added; the class bodies are copied unchanged."""

import torch
import torch.nn as nn

class ConditionalUNet1D(nn.Module):
    """1D U-Net for denoising action sequences."""
    def __init__(self, action_dim, obs_dim, hidden=256, diffusion_steps=100):
        super().__init__()
        self.diffusion_steps = diffusion_steps

        # Time embedding
        self.time_embed = nn.Sequential(
            nn.Embedding(diffusion_steps, hidden),
            nn.Linear(hidden, hidden), nn.SiLU(),
        )
        # Observation embedding
        self.obs_embed = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden),
        )
        # 1D Conv blocks (simplified U-Net)
        self.down1 = nn.Sequential(
            nn.Conv1d(action_dim, hidden, 3, padding=1), nn.SiLU(),
            nn.Conv1d(hidden, hidden, 3, padding=1), nn.SiLU(),
        )
        self.down2 = nn.Sequential(
            nn.Conv1d(hidden, hidden, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv1d(hidden, hidden, 3, padding=1), nn.SiLU(),
        )
        self.mid = nn.Sequential(
            nn.Conv1d(hidden, hidden, 3, padding=1), nn.SiLU(),
        )
        self.up2 = nn.Sequential(
            nn.ConvTranspose1d(hidden*2, hidden, 4, stride=2, padding=1), nn.SiLU(),
        )
        self.up1 = nn.Sequential(
            nn.Conv1d(hidden*2, hidden, 3, padding=1), nn.SiLU(),
            nn.Conv1d(hidden, action_dim, 3, padding=1),
        )

    def forward(self, noisy_actions, timestep, obs):
        """
        noisy_actions: (B, H, action_dim) → permute to (B, action_dim, H)
        timestep: (B,)
        obs: (B, obs_dim)
        """
        x = noisy_actions.permute(0, 2, 1)  # (B, action_dim, H)

        # Conditioning
        t_emb = self.time_embed(timestep)  # (B, hidden)
        o_emb = self.obs_embed(obs)        # (B, hidden)
        cond = (t_emb + o_emb).unsqueeze(-1)  # (B, hidden, 1) for broadcasting

        # Down
        h1 = self.down1(x)        # (B, hidden, H)
        h1 = h1 + cond            # Add conditioning
        h2 = self.down2(h1)       # (B, hidden, H/2)

        # Mid
        h = self.mid(h2) + cond[:, :, :1].expand_as(h2)

        # Up (with skip connections)
        h = self.up2(torch.cat([h, h2], dim=1))
        h = self.up1(torch.cat([h, h1], dim=1))

        return h.permute(0, 2, 1)  # (B, H, action_dim)

class DiffusionPolicy:
    def __init__(self, action_dim, obs_dim, chunk_size=16, n_steps=100):
        self.model = ConditionalUNet1D(action_dim, obs_dim, diffusion_steps=n_steps)
        self.n_steps = n_steps

        # Linear noise schedule
        betas = torch.linspace(1e-4, 0.02, n_steps)
        alphas = 1 - betas
        self.alpha_bars = torch.cumprod(alphas, 0)
        self.chunk_size = chunk_size
        self.action_dim = action_dim

    def train_step(self, obs, actions, optimizer):
        """One training step."""
        B = obs.shape[0]
        k = torch.randint(0, self.n_steps, (B,))
        noise = torch.randn_like(actions)

        ab = self.alpha_bars[k].view(B, 1, 1)
        noisy = torch.sqrt(ab) * actions + torch.sqrt(1-ab) * noise

        pred_noise = self.model(noisy, k, obs)
        loss = ((pred_noise - noise)**2).mean()

        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    @torch.no_grad()
    def sample(self, obs, n_steps=20):
        """DDIM-style sampling."""
        B = obs.shape[0]
        x = torch.randn(B, self.chunk_size, self.action_dim)
        step_indices = torch.linspace(self.n_steps-1, 0, n_steps, dtype=torch.long)

        for i in range(len(step_indices)-1):
            k = step_indices[i]
            k_batch = torch.full((B,), k, dtype=torch.long)
            pred_noise = self.model(x, k_batch, obs)

            ab = self.alpha_bars[k]
            ab_prev = self.alpha_bars[step_indices[i+1]]

            x0_pred = (x - torch.sqrt(1-ab) * pred_noise) / torch.sqrt(ab)
            x = torch.sqrt(ab_prev) * x0_pred + torch.sqrt(1-ab_prev) * pred_noise

        return x
