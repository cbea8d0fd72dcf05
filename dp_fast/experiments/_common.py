"""What every experiment shares: seeding, the training loop, the BC baseline, closed-loop
rollouts, latency timing, and writing results (JSON, PNG, a printed table)."""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from .. import _sampler, available_backends
from ..models import LessonUNet1D
from ..schedulers import DDIMScheduler


def seed_everything(seed: int) -> np.random.Generator:
    """Seeds Python, numpy and torch (training draws from torch's global RNG); returns the numpy
    Generator the experiment draws its data from."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda if available, else cpu; anything else must name an existing device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but no CUDA GPU is available")
    return dev


def x0_ddim(n_train_steps: int = 100) -> DDIMScheduler:
    """DDIM (diffusers' numbers) on the lesson's noise schedule, for policies trained the lesson's
    way: linear betas 1e-4...0.02, epsilon prediction, no clipping. Its last step returns the
    denoised actions (``set_alpha_to_one``), whereas the lesson's sampler stops at timestep 0 and
    leaves sqrt(1 - alpha_bar_0) = 0.01 of predicted noise on every action: harmless for where a
    path goes, but it dominates jerk and small tracking errors. ``sample(n_steps=n)`` runs n
    evaluations here."""
    return DDIMScheduler(n_train_steps, beta_schedule="linear", clip_sample=False, set_alpha_to_one=True)


class BCPolicy:
    """Behaviour cloning with the diffusion policy's own network: a ``LessonUNet1D`` of the same
    size (identical parameter count) used as a regressor. Its action input is zeros and its
    timestep 0, so it maps the observation straight to a chunk, trained with MSE to the
    demonstrated chunk. Same ``train_step``/``sample`` interface as ``DiffusionPolicy``."""

    def __init__(self, action_dim: int, obs_dim: int, chunk_size: int, hidden: int, n_obs_steps: int = 1):
        self.chunk_size, self.action_dim = chunk_size, action_dim
        self.model = LessonUNet1D(action_dim, obs_dim * n_obs_steps, hidden, diffusion_steps=100)

    def to(self, device) -> "BCPolicy":
        self.model.to(device)
        return self

    def predict(self, obs: torch.Tensor) -> torch.Tensor:
        """obs (B, obs_dim) or (B, K, obs_dim) -> actions (B, chunk_size, action_dim)."""
        cond = obs.reshape(obs.shape[0], -1)
        zeros = cond.new_zeros(cond.shape[0], self.chunk_size, self.action_dim)
        step = torch.zeros(cond.shape[0], dtype=torch.long, device=cond.device)
        return self.model(zeros, step, cond)

    def train_step(self, obs, actions, optimizer) -> float:
        loss = F.mse_loss(self.predict(obs), actions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    @torch.no_grad()
    def sample(self, obs, n_steps=None, noise=None, generator=None, backend=None) -> torch.Tensor:
        """Deterministic: the regression output; the sampling arguments are ignored."""
        return self.predict(obs)


def to_device(array, policy) -> torch.Tensor:
    """numpy array -> float32 tensor on the device of ``policy.model``."""
    return torch.as_tensor(array, dtype=torch.float32, device=next(policy.model.parameters()).device)


def count_parameters(policy) -> int:
    return sum(p.numel() for p in policy.model.parameters())


def progress_iter(items, *, desc: str, progress: bool = True):
    """``items`` wrapped in a tqdm bar (on stderr) unless ``progress`` is False."""
    return tqdm(items, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)


def train(policy, obs: torch.Tensor, actions: torch.Tensor, *, steps: int, batch_size: int, lr: float = 3e-3,
          desc: str = "train", progress: bool = True) -> list[float]:
    """Trains ``policy`` (anything with ``.model`` and ``.train_step(obs, actions, optimizer)``) on
    random minibatches of (obs (N, ...), actions (N, H, A)), AdamW with a cosine-decayed learning
    rate. Minibatches and the policy's own noise come from torch's global RNG (seeded by
    ``seed_everything``). Returns the loss of every step."""
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    policy.model.train()
    losses = []
    bar = progress_iter(range(steps), desc=desc, progress=progress)
    for i in bar:
        idx = torch.randint(0, len(obs), (batch_size,)).to(obs.device)
        losses.append(policy.train_step(obs[idx], actions[idx], optimizer))
        schedule.step()
        if i % 50 == 0 or i == steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    policy.model.eval()
    return losses


@torch.no_grad()
def sample_batched(policy, obs: torch.Tensor, *, n_steps: int, seed: int, batch_size: int = 1024, backend="auto"):
    """Samples one chunk per observation, in batches, with initial noise from a CPU generator
    seeded with ``seed`` (so the same seed gives the same noise on any device and backend).
    obs (N, ...) -> numpy (N, chunk_size, action_dim)."""
    gen = torch.Generator().manual_seed(seed)
    out = [
        policy.sample(obs[i : i + batch_size], n_steps=n_steps, generator=gen, backend=backend)
        for i in range(0, len(obs), batch_size)
    ]
    return torch.cat(out).double().cpu().numpy()


def rollout(policy, env, *, n_exec: int, n_steps: int, max_steps: int, seed: int, device, progress: bool = True,
            desc: str = "rollout"):
    """Closed loop: observe, sample a chunk, execute its first ``n_exec`` actions, repeat, for
    ``max_steps`` environment steps. ``env`` has ``observe() -> (n, ...)`` and ``step(action (n, A))``
    over numpy arrays. Returns ``env``."""
    gen = torch.Generator().manual_seed(seed)
    steps = 0
    with tqdm(total=max_steps, desc=desc, disable=not progress, leave=False, dynamic_ncols=True) as bar:
        while steps < max_steps:
            obs = torch.as_tensor(env.observe(), dtype=torch.float32, device=device)
            chunk = policy.sample(obs, n_steps=n_steps, generator=gen).double().cpu().numpy()
            for k in range(min(n_exec, max_steps - steps)):
                env.step(chunk[:, k])
                steps += 1
                bar.update(1)
    return env


def time_sample(policy, obs: torch.Tensor, *, n_steps: int, backend: str, repeats: int, warmup: int = 3) -> float:
    """Median wall-clock milliseconds of one ``policy.sample(obs, n_steps, backend=backend)``,
    after ``warmup`` untimed calls (a fast backend may capture a CUDA graph on the first)."""
    sync = torch.cuda.synchronize if obs.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        policy.sample(obs, n_steps=n_steps, backend=backend)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        policy.sample(obs, n_steps=n_steps, backend=backend)
        sync()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def usable_backends(policy, obs: torch.Tensor) -> tuple[list[str], dict]:
    """The available backends that can sample this policy on ``obs``'s device, in
    ``available_backends()`` order, and {backend: reason} for the ones that cannot."""
    usable, skipped = [], {}
    for backend in available_backends():
        try:
            policy.sample(obs[:1], n_steps=2, backend=backend)
            usable.append(backend)
        except (NotImplementedError, RuntimeError, ValueError, TypeError) as err:
            skipped[backend] = f"{type(err).__name__}: {err}"
    return usable, skipped


def auto_backend_name(policy) -> str:
    """The backend ``sample(..., backend="auto")`` resolves to for this policy."""
    return _sampler.auto_backend(policy.device, 1, policy.model)


def output_dir(out) -> Path:
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    return path


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"cannot write {type(x).__name__} to JSON")


# Figures are made without pyplot: a ``Figure`` saves to PNG through Agg and leaves the caller's
# matplotlib backend and pyplot state alone.


def figure(ncols: int = 1, width: float = 5.0, height: float = 4.5):
    """A new figure with ``ncols`` axes side by side; returns (fig, [axes])."""
    fig = Figure(figsize=(width * ncols, height))
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def save_figure(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def print_table(headers: list[str], rows: list[list]) -> None:
    """Prints rows under headers, columns aligned; floats with 3 decimals."""
    cells = [[_fmt(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)
