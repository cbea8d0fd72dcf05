"""Exercise 1: behaviour cloning vs Diffusion Policy on a task with two valid strategies.

Demonstrations go around the obstacle on the left or on the right, half each, from the same
starts. BC (the same LessonUNet1D, used as an MSE regressor) predicts the mean of the two,
which goes through the obstacle; Diffusion Policy samples one or the other.
"""

from __future__ import annotations

import numpy as np
from matplotlib.lines import Line2D

from .. import DiffusionPolicy
from . import _common as C
from . import tasks

NAME = "multimodal"
TITLE = "Exercise 1: BC vs Diffusion Policy on a two-mode task"
CHUNK_SIZE = 16  # one chunk is the whole path from start to goal
QUICK = dict(train_steps=150, hidden=32, n_demos=256, n_eval=64)
MODE_COLORS = {0: "tab:blue", 1: "tab:orange", -1: "tab:red"}


def obstacle_data(n_demos: int, rng: np.random.Generator, device):
    """Whole-path demonstrations as tensors: obs (n_demos, 2), actions (n_demos, CHUNK_SIZE, 2)."""
    obs, actions, _ = tasks.chunk_demos(n_demos, CHUNK_SIZE, rng)
    return tasks.to_tensors(obs, actions, device=device)


def train_diffusion(obs, actions, *, hidden: int, train_steps: int, batch_size: int, progress: bool,
                    desc: str = "diffusion") -> tuple[DiffusionPolicy, list[float]]:
    """The lesson's DiffusionPolicy (LessonUNet1D + lesson DDIM) trained on the whole-path demos;
    returns it and its training losses."""
    policy = DiffusionPolicy(2, 2, CHUNK_SIZE, hidden=hidden, device=obs.device)
    losses = C.train(policy, obs, actions, steps=train_steps, batch_size=batch_size, desc=desc, progress=progress)
    return policy, losses


def evaluate_modes(policy, eval_obs: np.ndarray, *, n_steps: int, seed: int, backend="auto") -> dict:
    """Samples one whole-path chunk per start (eval_obs (N, 2)) and classifies it.

    Returns chunks (N, H, 2), mode (N,) (0 left, 1 right, -1 neither), shares of each mode,
    the collision rate and the mean distance to the nearer mode prototype."""
    obs = C.to_device(eval_obs, policy)
    chunks = C.sample_batched(policy, obs, n_steps=n_steps, seed=seed, backend=backend)
    cls = tasks.classify_modes(eval_obs, chunks)
    return {
        "chunks": chunks,
        "mode": cls["mode"],
        "shares": tasks.mode_shares(cls["mode"]),
        "collision_rate": float(cls["collides"].mean()),
        "mode_distance": float(cls["distance"].mean()),
    }


def plot_paths(ax, obs: np.ndarray, chunks: np.ndarray, mode: np.ndarray, title: str, demos=None) -> None:
    """Draws sampled paths (start + chunk) coloured by mode over the scene and, if given,
    the demonstrations ``demos = (obs (M, 2), actions (M, H, 2))`` in light grey."""
    tasks.draw_obstacle_scene(ax)
    if demos is not None:
        for o, a in zip(*demos):
            ax.plot(*np.vstack([o, a]).T, color="0.75", lw=0.6, zorder=1)
    for o, a, m in zip(obs, chunks, mode):
        ax.plot(*np.vstack([o, a]).T, color=MODE_COLORS[int(m)], lw=0.9, alpha=0.6, zorder=2)
    names = {0: "left", 1: "right", -1: "neither (e.g. through the obstacle)"}
    handles = [Line2D([], [], color=MODE_COLORS[m], label=names[m]) for m in (0, 1, -1)]
    if demos is not None:
        handles.append(Line2D([], [], color="0.75", label="demonstrations"))
    ax.legend(handles=handles, loc="lower left", fontsize=7)
    shares = tasks.mode_shares(mode)
    ax.set_title(f"{title}\nleft {shares['left']:.0%}  right {shares['right']:.0%}  neither {shares['neither']:.0%}")


def run(*, out="out/multimodal", device="cpu", seed=0, train_steps=3000, hidden=64, batch_size=128, n_demos=1000,
        n_eval=200, n_steps=20, progress=True) -> dict:
    """Trains BC and Diffusion Policy on the same demonstrations, samples ``n_eval`` paths from
    each (diffusion: the lesson's DDIM with ``n_steps`` points), writes multimodal.png/.json."""
    rng = C.seed_everything(seed)
    dev = C.resolve_device(device)
    out = C.output_dir(out)
    obs, actions = obstacle_data(n_demos, rng, dev)
    eval_obs = tasks.sample_starts(n_eval, rng)

    diffusion, _ = train_diffusion(obs, actions, hidden=hidden, train_steps=train_steps, batch_size=batch_size,
                                progress=progress)
    bc = C.BCPolicy(2, 2, CHUNK_SIZE, hidden).to(dev)
    C.train(bc, obs, actions, steps=train_steps, batch_size=batch_size, desc="BC", progress=progress)

    evals = {
        "bc": evaluate_modes(bc, eval_obs, n_steps=n_steps, seed=seed),
        "diffusion": evaluate_modes(diffusion, eval_obs, n_steps=n_steps, seed=seed),
    }
    results = {
        "experiment": NAME,
        "question": "Does BC average the two demonstrated modes while Diffusion Policy keeps both?",
        "config": dict(seed=seed, device=str(dev), train_steps=train_steps, hidden=hidden, batch_size=batch_size,
                       n_demos=n_demos, n_eval=n_eval, chunk_size=CHUNK_SIZE, n_steps=n_steps,
                       n_network_evaluations=n_steps - 1, mode_tolerance=tasks.MODE_TOLERANCE,
                       parameters={"bc": C.count_parameters(bc), "diffusion": C.count_parameters(diffusion)}),
        "metric": "share of sampled paths whose mean distance to the left/right prototype path is below "
                  "mode_tolerance ('neither' otherwise); collision_rate: share that enters the obstacle",
        "policies": {
            name: {**e["shares"], "collision_rate": e["collision_rate"], "mode_distance": e["mode_distance"]}
            for name, e in evals.items()
        },
    }

    fig, axes = C.figure(2)
    demos = (obs[:60].cpu().numpy(), actions[:60].cpu().numpy())
    plot_paths(axes[0], eval_obs, evals["bc"]["chunks"], evals["bc"]["mode"], "BC (MSE regression)", demos)
    plot_paths(axes[1], eval_obs, evals["diffusion"]["chunks"], evals["diffusion"]["mode"],
               f"Diffusion Policy ({n_steps - 1} DDIM evaluations)", demos)
    results["files"] = {
        "plot": str(C.save_figure(fig, out / f"{NAME}.png")),
        "json": str(out / f"{NAME}.json"),
    }
    C.write_json(out / f"{NAME}.json", results)

    print(TITLE)
    C.print_table(
        ["policy", "left", "right", "neither", "collides", "dist to mode"],
        [[name, r["left"], r["right"], r["neither"], r["collision_rate"], r["mode_distance"]]
         for name, r in results["policies"].items()],
    )
    print(f"wrote {results['files']['plot']} and {results['files']['json']}")
    return results
