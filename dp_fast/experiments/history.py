"""Exercise 4: does conditioning on the last K observations help? K in {1, 2, 4}.

A target moves at a constant, never observed velocity and its observed position is noisy; the
action chunk is where the gripper should be over the next H steps, i.e. on the target. From one
observation (K = 1) the heading is unknowable; two give a velocity; four average out the noise.
The policy is ``DiffusionPolicy(..., n_obs_steps=K)``: the network's condition is the flattened
last K observations.
"""

from __future__ import annotations

import numpy as np

from .. import DiffusionPolicy
from . import _common as C
from . import tasks

NAME = "history"
TITLE = "Exercise 4: observation history K vs tracking error (closed loop)"
DEFAULT_HISTORIES = (1, 2, 4)
CHUNK_SIZE = 8
EPISODE_LEN = 32
TOLERANCE = 0.02  # an episode succeeds if the gripper's mean distance to the target is below this
QUICK = dict(train_steps=100, hidden=32, n_demos=64, n_eval=16, histories=(1, 2))
K_COLORS = ("tab:red", "tab:orange", "tab:blue", "tab:green", "tab:purple")


def _policy_layout(obs: np.ndarray) -> np.ndarray:
    """(N, K, 2) -> (N, 2) when K == 1, as DiffusionPolicy takes a single observation."""
    return obs[:, 0] if obs.shape[1] == 1 else obs


class _Env(tasks.TrackingEnv):
    def observe(self):
        return _policy_layout(super().observe())


def run(*, out="out/history", device="cpu", seed=0, train_steps=3000, hidden=64, batch_size=128, n_demos=1000,
        n_eval=200, histories=DEFAULT_HISTORIES, n_steps=10, progress=True) -> dict:
    """For each K: trains a diffusion policy on ``n_demos`` tracking episodes, then tracks
    ``n_eval`` new targets in closed loop (execute CHUNK_SIZE/2 actions, re-plan), all K on the
    same episodes and noise. Writes history.png/.json."""
    histories = sorted(set(int(k) for k in histories))
    warmup = max(histories)
    rng = C.seed_everything(seed)
    dev = C.resolve_device(device)
    out = C.output_dir(out)
    true, observed = tasks.tracking_episodes(n_demos, EPISODE_LEN, rng)
    per_k, examples = {}, {}
    for k in histories:
        o, a = tasks.tracking_windows(true, observed, k, CHUNK_SIZE)
        obs, actions = tasks.to_tensors(_policy_layout(o), a, device=dev)
        policy = DiffusionPolicy(2, 2, CHUNK_SIZE, hidden=hidden, n_obs_steps=k, scheduler=C.x0_ddim(), device=dev)
        C.train(policy, obs, actions, steps=train_steps, batch_size=batch_size, desc=f"K={k}", progress=progress)
        env = _Env(n_eval, k, EPISODE_LEN, np.random.default_rng(seed + 1), warmup=warmup)
        C.rollout(policy, env, n_exec=CHUNK_SIZE // 2, n_steps=n_steps, max_steps=env.steps_left, seed=seed,
                  device=dev, progress=progress, desc=f"K={k} rollout")
        m = env.metrics(TOLERANCE)
        per_k[k] = dict(history=k, error=float(m["error"].mean()), error_median=float(np.median(m["error"])),
                        success=float(m["success"].mean()))
        examples[k] = (env, m["error"])

    results = {
        "experiment": NAME,
        "question": "Does conditioning on the last K observations help on a task that needs velocity?",
        "config": dict(seed=seed, device=str(dev), train_steps=train_steps, hidden=hidden, batch_size=batch_size,
                       n_demos=n_demos, n_eval=n_eval, histories=histories, chunk_size=CHUNK_SIZE,
                       executed_per_plan=CHUNK_SIZE // 2, episode_len=EPISODE_LEN, n_steps=n_steps,
                       sampler="DDIM to x0 (diffusers, lesson's linear schedule)", n_network_evaluations=n_steps,
                       obs_noise=tasks.TRACK_OBS_NOISE, speed_range=tasks.TRACK_SPEED_RANGE, tolerance=TOLERANCE),
        "metric": "error: mean over episodes of the gripper's mean distance to the target at each executed step; "
                  "success: share of episodes whose mean error is below tolerance",
        "histories": list(per_k.values()),
    }

    fig, (ax_ex, ax_err, ax_s) = C.figure(3, width=4.5)
    env0 = examples[histories[0]][0]
    shown = int(np.argmax(np.linalg.norm(env0.true[:, -1] - env0.true[:, 0], axis=1)))  # the fastest target
    ax_ex.plot(*env0.true[shown].T, "k-", lw=1, label="target (true)")
    ax_ex.plot(*env0.observed[shown].T, "k.", ms=3, label="target (observed)")
    for i, k in enumerate(histories):
        gripper, _ = examples[k][0].trajectories()
        ax_ex.plot(*gripper[shown].T, "o-", ms=2.5, lw=0.8, color=K_COLORS[i % len(K_COLORS)], label=f"gripper, K={k}")
    ax_ex.set_aspect("equal", adjustable="datalim")
    ax_ex.set_title("one episode (the fastest target)")
    ax_ex.legend(fontsize=7)
    labels = [f"K={k}" for k in histories]
    colors = [K_COLORS[i % len(K_COLORS)] for i in range(len(histories))]
    ax_err.boxplot([examples[k][1] for k in histories], showfliers=False)
    ax_err.set_xticks(range(1, len(histories) + 1), labels)
    ax_err.axhline(TOLERANCE, color="0.5", ls="--", lw=1, label="success tolerance")
    ax_err.set_yscale("log")
    ax_err.set_ylabel("mean distance gripper-target per episode")
    ax_err.set_title("tracking error (lower is better)")
    ax_err.legend(fontsize=8)
    ax_s.bar(labels, [100 * per_k[k]["success"] for k in histories], color=colors)
    ax_s.set_ylim(0, 100)
    ax_s.set_ylabel(f"success [%] (mean error < {TOLERANCE})")
    ax_s.set_title("success vs history length")
    results["files"] = {"plot": str(C.save_figure(fig, out / f"{NAME}.png")), "json": str(out / f"{NAME}.json")}
    C.write_json(out / f"{NAME}.json", results)

    print(TITLE)
    C.print_table(["K", "mean error", "median error", "success"],
                  [[k, r["error"], r["error_median"], r["success"]] for k, r in per_k.items()])
    print(f"wrote {results['files']['plot']} and {results['files']['json']}")
    return results
