"""The toy tasks the exercises run on: demonstrations, closed-loop environments, and their scene.

Two tasks, both in a 2-D plane, positions in roughly [-1, 1]:

* **Obstacle** (exercises 1-3, demo): a point starts near (0, -1) and must reach the goal (0, 1)
  around a round obstacle at the origin. Demonstrations pass it on the left or on the right,
  half each, so for the same observation there are two equally good action chunks.
* **Tracking** (exercise 4): a target moves at a constant velocity that is never observed; the
  action chunk is where the gripper should be over the next steps, i.e. on the target. One
  noisy position cannot tell where the target is heading; a short history can.

Arrays are numpy float64 until they become training tensors (float32).
"""

from __future__ import annotations

import numpy as np
import torch

GOAL = np.array([0.0, 1.0])
START_Y = -1.0
OBSTACLE_CENTER = np.array([0.0, 0.0])
OBSTACLE_RADIUS = 0.35
SIDES = ("left", "right")  # the two modes; side -1 passes at negative x
START_X_RANGE = 0.1  # demonstrations start at x in [-0.1, 0.1]
AMPLITUDE_RANGE = (0.6, 0.8)  # how far the path bulges sideways; the prototype uses the middle
MODE_TOLERANCE = 0.1  # a chunk is "near" a mode if its mean distance to the mode's prototype is below this
GOAL_TOLERANCE = 0.1


# -- obstacle task ----------------------------------------------------------------------------


def obstacle_path(start: np.ndarray, side: np.ndarray, amplitude: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Points of the path from ``start`` to GOAL passing the obstacle on ``side``.

    start (N, 2); side (N,) in {-1, +1}; amplitude (N,); s (S,) path parameters in [0, 1]
    (0 = start, 1 = goal) -> (N, S, 2). The path is the straight line plus a sideways
    bulge ``side * amplitude * sin(pi * s)``, which clears the obstacle for amplitudes
    in AMPLITUDE_RANGE.
    """
    s = s[None, :, None]
    line = start[:, None, :] * (1 - s) + GOAL * s
    bulge = (side * amplitude)[:, None, None] * np.sin(np.pi * s) * np.array([1.0, 0.0])
    return line + bulge


def sample_starts(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) start positions: x uniform in +-START_X_RANGE, y = START_Y."""
    x = rng.uniform(-START_X_RANGE, START_X_RANGE, n)
    return np.stack([x, np.full(n, START_Y)], axis=1)


def chunk_demos(n: int, chunk_size: int, rng: np.random.Generator):
    """Whole-path demonstrations for exercises 1-2 and the demo: one chunk goes from start to goal.

    Returns obs (n, 2) = the start, actions (n, chunk_size, 2) = the next ``chunk_size``
    positions, the last one the goal, and side (n,) in {-1, +1}, exactly half each.
    """
    starts = sample_starts(n, rng)
    side = rng.permutation(np.where(np.arange(n) % 2 == 0, -1.0, 1.0))
    amplitude = rng.uniform(*AMPLITUDE_RANGE, n)
    s = np.arange(1, chunk_size + 1) / chunk_size
    return starts, obstacle_path(starts, side, amplitude, s), side


def mode_prototypes(obs: np.ndarray, chunk_size: int) -> np.ndarray:
    """(2, N, chunk_size, 2): the left and right demonstration with the middle amplitude, per start."""
    s = np.arange(1, chunk_size + 1) / chunk_size
    amplitude = np.full(len(obs), np.mean(AMPLITUDE_RANGE))
    return np.stack([obstacle_path(obs, np.full(len(obs), side), amplitude, s) for side in (-1.0, 1.0)])


def classify_modes(obs: np.ndarray, chunks: np.ndarray) -> dict:
    """Which mode each sampled whole-path chunk follows.

    obs (N, 2) starts; chunks (N, H, 2). Returns ``mode`` (N,) with 0 = left, 1 = right,
    -1 = neither (mean distance to both prototypes >= MODE_TOLERANCE), ``distance`` (N,) the mean
    distance to the nearer prototype, and ``collides`` (N,) whether the path enters the obstacle.
    """
    protos = mode_prototypes(obs, chunks.shape[1])
    dist = np.linalg.norm(chunks[None] - protos, axis=-1).mean(-1)  # (2, N)
    nearest = dist.argmin(0)
    distance = dist.min(0)
    mode = np.where(distance < MODE_TOLERANCE, nearest, -1)
    collides = segment_hits_obstacle(np.concatenate([obs[:, None], chunks], axis=1))
    return {"mode": mode, "distance": distance, "collides": collides}


def mode_shares(mode: np.ndarray) -> dict:
    """{"left", "right", "neither"} -> fraction of samples, from ``classify_modes``'s mode."""
    return {
        "left": float(np.mean(mode == 0)),
        "right": float(np.mean(mode == 1)),
        "neither": float(np.mean(mode == -1)),
    }


def segment_hits_obstacle(paths: np.ndarray) -> np.ndarray:
    """(N, T, 2) polylines -> (N,) bool: does any segment pass within OBSTACLE_RADIUS of the centre."""
    a, b = paths[:, :-1], paths[:, 1:]
    ab = b - a
    t = np.clip(np.sum((OBSTACLE_CENTER - a) * ab, -1) / np.maximum(np.sum(ab * ab, -1), 1e-12), 0, 1)
    closest = a + t[..., None] * ab
    return (np.linalg.norm(closest - OBSTACLE_CENTER, axis=-1) < OBSTACLE_RADIUS).any(-1)


def window_demos(n_episodes: int, episode_len: int, chunk_size: int, rng: np.random.Generator):
    """Closed-loop demonstrations for exercise 3: every window of every demonstrated episode.

    Each episode walks ``episode_len`` steps along an obstacle path (starts spread over
    +-2 * START_X_RANGE so the rollouts' states are covered). Returns obs (N, 2) = position at
    step t and actions (N, chunk_size, 2) = positions t+1 ... t+chunk_size (the goal repeated
    once the episode has ended), N = n_episodes * episode_len.
    """
    starts = sample_starts(n_episodes, rng) * np.array([2.0, 1.0])
    side = rng.choice([-1.0, 1.0], n_episodes)
    amplitude = rng.uniform(*AMPLITUDE_RANGE, n_episodes)
    s = np.minimum(np.arange(episode_len + chunk_size) / episode_len, 1.0)
    paths = obstacle_path(starts, side, amplitude, s)  # (E, L + H, 2)
    idx = np.arange(episode_len)[:, None] + np.arange(1, chunk_size + 1)  # (L, H)
    obs = paths[:, :episode_len].reshape(-1, 2)
    actions = paths[:, idx].reshape(-1, chunk_size, 2)
    return obs, actions


class NavigationEnv:
    """The obstacle task in closed loop, batched over episodes.

    An action is a target position (2,); the point moves by the commanded displacement (from
    its previous target, or from where it was observed for the first action of a chunk) plus
    a constant per-episode drift it never observes (a slope, a miscalibrated motor), so open-loop
    execution accumulates error and re-planning corrects it. An episode is done once it is within
    GOAL_TOLERANCE of the goal; then it stops moving.
    """

    def __init__(self, n: int, drift: float, rng: np.random.Generator):
        self.pos = sample_starts(n, rng)
        angle = rng.uniform(0, 2 * np.pi, n)
        self.drift = drift * rng.uniform(0, 1, n)[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
        self.done = np.zeros(n, dtype=bool)
        self.path = [self.pos.copy()]
        self._last_target = self.pos.copy()

    def observe(self) -> np.ndarray:
        """(n, 2) current positions; the start of a new chunk."""
        self._last_target = self.pos.copy()
        return self.pos.copy()

    def step(self, target: np.ndarray) -> None:
        """target (n, 2): the next action of the current chunk."""
        move = target - self._last_target + self.drift
        self._last_target = target
        self.pos = np.where(self.done[:, None], self.pos, self.pos + move)
        self.done |= np.linalg.norm(self.pos - GOAL, axis=1) < GOAL_TOLERANCE
        self.path.append(self.pos.copy())

    def metrics(self) -> dict:
        """Per episode: success (reached the goal without touching the obstacle), collided,
        reached, and mean squared jerk (squared third difference of positions) until done."""
        path = np.stack(self.path, 1)  # (n, T, 2)
        collided = segment_hits_obstacle(path)
        jerk = np.sum(np.diff(path, n=3, axis=1) ** 2, -1)  # (n, T-3)
        # Only while moving: the stop at the goal is the same for every policy and would swamp it.
        moving = (np.linalg.norm(np.diff(path, axis=1), axis=-1) > 0)[:, 2:]  # (n, T-3)
        return {
            "success": self.done & ~collided,
            "collided": collided,
            "reached": self.done.copy(),
            "jerk": (jerk * moving).sum(1) / np.maximum(moving.sum(1), 1),
        }


# -- tracking task (exercise 4) ---------------------------------------------------------------

TRACK_SPEED_RANGE = (0.02, 0.06)  # per step
TRACK_OBS_NOISE = 0.005  # standard deviation of each observed position


def tracking_episodes(n: int, length: int, rng: np.random.Generator):
    """n targets moving at constant velocity for ``length`` steps, centred on the origin.

    Returns true (n, length, 2) and observed (n, length, 2) = true + N(0, TRACK_OBS_NOISE^2) positions.
    """
    speed = rng.uniform(*TRACK_SPEED_RANGE, n)
    angle = rng.uniform(0, 2 * np.pi, n)
    velocity = speed[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
    start = rng.uniform(-0.3, 0.3, (n, 2)) - velocity * length / 2
    true = start[:, None] + velocity[:, None] * np.arange(length)[None, :, None]
    observed = true + rng.normal(0, TRACK_OBS_NOISE, true.shape)
    return true, observed


def tracking_windows(true: np.ndarray, observed: np.ndarray, history: int, chunk_size: int):
    """Training pairs from tracking episodes: obs (N, history, 2) = the last ``history`` observed
    positions up to step t, actions (N, chunk_size, 2) = true positions t+1 ... t+chunk_size."""
    length = true.shape[1]
    ts = np.arange(history - 1, length - chunk_size)
    obs = np.stack([observed[:, t - history + 1 : t + 1] for t in ts], 1)
    actions = np.stack([true[:, t + 1 : t + 1 + chunk_size] for t in ts], 1)
    return obs.reshape(-1, history, 2), actions.reshape(-1, chunk_size, 2)


class TrackingEnv:
    """Exercise 4 in closed loop: the gripper goes where each action says; the error is its
    distance to the target at that step. Observations are the last ``history`` noisy target
    positions, oldest first; the first ``warmup`` steps of each episode only fill the history."""

    def __init__(self, n: int, history: int, length: int, rng: np.random.Generator, warmup: int = 4):
        self.true, self.observed = tracking_episodes(n, length, rng)
        self.history, self.first, self.t = history, warmup, warmup - 1
        self.gripper = []  # (n, 2) per executed step

    def observe(self) -> np.ndarray:
        """(n, history, 2)"""
        return self.observed[:, self.t - self.history + 1 : self.t + 1].copy()

    def step(self, target: np.ndarray) -> None:
        self.t += 1
        self.gripper.append(target.copy())

    @property
    def steps_left(self) -> int:
        return self.true.shape[1] - 1 - self.t

    def trajectories(self):
        """gripper (n, S, 2) and the true target (n, S, 2) over the S executed steps."""
        return np.stack(self.gripper, 1), self.true[:, self.first : self.t + 1]

    def metrics(self, tolerance: float) -> dict:
        """Per episode: mean tracking error and success (mean error below ``tolerance``)."""
        gripper, true = self.trajectories()
        error = np.linalg.norm(gripper - true, axis=-1).mean(1)
        return {"error": error, "success": error < tolerance}


def to_tensors(*arrays, device="cpu"):
    """numpy arrays -> float32 tensors on ``device``."""
    return tuple(torch.as_tensor(a, dtype=torch.float32, device=device) for a in arrays)


# -- drawing ------------------------------------------------------------------------------------


def draw_obstacle_scene(ax) -> None:
    """The obstacle, the start region and the goal on a matplotlib axis, equal aspect."""
    import matplotlib.patches as patches

    ax.add_patch(patches.Circle(OBSTACLE_CENTER, OBSTACLE_RADIUS, color="0.3", alpha=0.6, zorder=3))
    ax.add_patch(patches.Circle(GOAL, GOAL_TOLERANCE, fill=False, ec="green", lw=1.5, zorder=3))
    ax.plot([-START_X_RANGE, START_X_RANGE], [START_Y, START_Y], color="black", lw=3, zorder=3)
    ax.text(GOAL[0] + 0.13, GOAL[1], "goal", va="center", color="green")
    ax.text(START_X_RANGE + 0.05, START_Y, "start", va="center")
    ax.set_xlim(-1.3, 1.3)
    ax.set_ylim(-1.3, 1.3)
    ax.set_aspect("equal")
