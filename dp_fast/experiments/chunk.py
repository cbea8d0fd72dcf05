"""Exercise 3: chunk size H in {4, 8, 16, 32}: trajectory smoothness and task success.

The obstacle task in closed loop: the policy sees the current position, predicts the next H
positions, the first H/2 are executed (as Chi et al. execute 8 of 16), and it re-plans. Each
episode has an unobserved constant drift, so a long open-loop stretch accumulates error;
each re-plan may also switch between the left and the right mode, which shows as jerk.
LessonUNet1D halves the horizon once, so H must be even.

The network and training are the lesson's; sampling uses DDIM that ends on the denoised actions
(``_common.x0_ddim``, n_steps = network evaluations), because the lesson's sampler leaves 1% noise
on each action, which alone is far more jerk than any chunk size causes.
"""

from __future__ import annotations

import numpy as np

from .. import DiffusionPolicy
from . import _common as C
from . import tasks

NAME = "chunk"
TITLE = "Exercise 3: chunk size vs smoothness and success (closed loop)"
DEFAULT_CHUNK_SIZES = (4, 8, 16, 32)
EPISODE_LEN = 40  # steps a demonstration takes from start to goal
QUICK = dict(train_steps=100, hidden=32, n_demos=64, n_eval=16, chunk_sizes=(4, 8))
SHOWN_EPISODES = 25


def run(*, out="out/chunk", device="cpu", seed=0, train_steps=6000, hidden=64, batch_size=128, n_demos=500,
        n_eval=100, chunk_sizes=DEFAULT_CHUNK_SIZES, n_steps=10, drift=0.01, progress=True) -> dict:
    """For each H: trains a diffusion policy on every H-step window of ``n_demos`` demonstrated
    episodes, rolls out ``n_eval`` episodes (re-planning every H/2 steps, ``n_steps`` DDIM points,
    drift up to ``drift`` per step), and measures success and mean squared jerk.
    Writes chunk.png/.json."""
    chunk_sizes = sorted(set(int(h) for h in chunk_sizes))
    rng = C.seed_everything(seed)
    dev = C.resolve_device(device)
    out = C.output_dir(out)
    max_steps = int(1.5 * EPISODE_LEN)
    per_chunk, paths = {}, {}
    for h in chunk_sizes:
        obs, actions = tasks.to_tensors(*tasks.window_demos(n_demos, EPISODE_LEN, h, rng), device=dev)
        policy = DiffusionPolicy(2, 2, h, hidden=hidden, scheduler=C.x0_ddim(), device=dev)
        C.train(policy, obs, actions, steps=train_steps, batch_size=batch_size, desc=f"H={h}", progress=progress)
        # Every H faces the same episodes: same starts, same drifts, same sampling noise.
        env = tasks.NavigationEnv(n_eval, drift, np.random.default_rng(seed + 1))
        C.rollout(policy, env, n_exec=h // 2, n_steps=n_steps, max_steps=max_steps, seed=seed, device=dev,
                  progress=progress, desc=f"H={h} rollout")
        m = env.metrics()
        per_chunk[h] = dict(chunk_size=h, executed_per_plan=h // 2, success=float(m["success"].mean()),
                            collided=float(m["collided"].mean()), reached=float(m["reached"].mean()),
                            jerk=float(m["jerk"].mean()), jerk_median=float(np.median(m["jerk"])))
        paths[h] = (np.stack(env.path, 1)[:SHOWN_EPISODES], m["success"][:SHOWN_EPISODES])

    results = {
        "experiment": NAME,
        "question": "How does the chunk size H trade smoothness against closed-loop success?",
        "config": dict(seed=seed, device=str(dev), train_steps=train_steps, hidden=hidden, batch_size=batch_size,
                       n_demos=n_demos, n_eval=n_eval, chunk_sizes=chunk_sizes, executed_per_plan="H/2",
                       sampler="DDIM to x0 (diffusers, lesson's linear schedule)", n_steps=n_steps,
                       n_network_evaluations=n_steps, max_steps=max_steps,
                       max_drift_per_step=drift, episode_len=EPISODE_LEN),
        "metric": "success: reached the goal within max_steps without entering the obstacle; jerk: mean over "
                  "episodes of the mean squared third difference of executed positions while moving (lower is smoother)",
        "chunk_sizes": list(per_chunk.values()),
    }

    fig = C.Figure(figsize=(3.2 * len(chunk_sizes), 7.5))
    grid = fig.add_gridspec(2, 2 * len(chunk_sizes), height_ratios=[1.2, 1])
    for i, h in enumerate(chunk_sizes):
        ax = fig.add_subplot(grid[0, 2 * i : 2 * i + 2])
        tasks.draw_obstacle_scene(ax)
        for path, ok in zip(*paths[h]):
            ax.plot(*path.T, color="tab:green" if ok else "tab:red", lw=0.8, alpha=0.7)
        ax.set_title(f"H={h} (execute {h // 2})\nsuccess {per_chunk[h]['success']:.0%}")
    half = len(chunk_sizes)
    ax_s = fig.add_subplot(grid[1, :half])
    ax_s.bar([str(h) for h in chunk_sizes], [100 * per_chunk[h]["success"] for h in chunk_sizes], color="tab:green")
    ax_s.set_xlabel("chunk size H")
    ax_s.set_ylabel("success [%]")
    ax_s.set_ylim(0, 100)
    ax_j = fig.add_subplot(grid[1, half:])
    ax_j.bar([str(h) for h in chunk_sizes], [per_chunk[h]["jerk"] for h in chunk_sizes], color="tab:purple")
    ax_j.set_xlabel("chunk size H")
    ax_j.set_ylabel("mean squared jerk (lower = smoother)")
    results["files"] = {"plot": str(C.save_figure(fig, out / f"{NAME}.png")), "json": str(out / f"{NAME}.json")}
    C.write_json(out / f"{NAME}.json", results)

    print(TITLE)
    C.print_table(
        ["H", "exec", "success", "collided", "reached", "jerk"],
        [[h, r["executed_per_plan"], r["success"], r["collided"], r["reached"], f"{r['jerk']:.2e}"]
         for h, r in per_chunk.items()],
    )
    print(f"wrote {results['files']['plot']} and {results['files']['json']}")
    return results
