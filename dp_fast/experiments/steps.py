"""Exercise 2: how many DDIM steps does sampling need? Action quality against latency.

n is the lesson's ``sample(obs, n_steps=n)``: n points of ``linspace(99, 0, n)``, i.e. n - 1
network evaluations (so "100 steps" is 99 evaluations). Quality is measured on exercise 1's
task (mean distance of each sampled path to the nearer demonstrated mode, and the share of
paths near neither mode); latency is the median time of one ``sample()`` at batch 1, for the
reference backend and every fast backend this build has.
"""

from __future__ import annotations

import numpy as np

from . import _common as C
from . import multimodal, tasks

NAME = "steps"
TITLE = "Exercise 2: DDIM steps vs action quality and latency"
DEFAULT_N_STEPS = (5, 10, 20, 50, 100)
# "Acceptable" quality, relative to the largest n: mean distance to the nearer mode within 10%,
# and at most 2 percentage points more paths near neither mode.
ACCEPTABLE_DISTANCE_RATIO = 1.1
ACCEPTABLE_EXTRA_NEITHER = 0.02
QUICK = dict(train_steps=150, hidden=32, n_demos=256, n_eval=32, repeats=3)
BACKEND_STYLES = {"reference": "o-", "triton": "s-", "cuda": "^-"}


def run(*, out="out/steps", device="cpu", seed=0, train_steps=3000, hidden=64, batch_size=128, n_demos=1000,
        n_eval=200, n_steps=DEFAULT_N_STEPS, repeats=20, progress=True) -> dict:
    """Trains exercise 1's diffusion policy, then for every n in ``n_steps`` and every backend:
    quality of ``n_eval`` samples (same initial noise for every n) and the median latency of
    ``repeats`` batch-1 calls. Writes steps.png/.json."""
    n_steps = sorted(set(int(n) for n in n_steps))
    rng = C.seed_everything(seed)
    dev = C.resolve_device(device)
    out = C.output_dir(out)
    obs, actions = multimodal.obstacle_data(n_demos, rng, dev)
    eval_obs = tasks.sample_starts(n_eval, rng)
    policy, _ = multimodal.train_diffusion(obs, actions, hidden=hidden, train_steps=train_steps,
                                        batch_size=batch_size, progress=progress)

    one_obs = C.to_device(eval_obs[:1], policy)
    backends, skipped = C.usable_backends(policy, one_obs)
    rows, results_by_backend = [], {}
    for backend in backends:
        best = multimodal.evaluate_modes(policy, eval_obs, n_steps=n_steps[-1], seed=seed, backend=backend)
        entries = []
        for n in C.progress_iter(n_steps, desc=f"{backend}: sample + time", progress=progress):
            ev = multimodal.evaluate_modes(policy, eval_obs, n_steps=n, seed=seed, backend=backend)
            latency = C.time_sample(policy, one_obs, n_steps=n, backend=backend, repeats=repeats)
            deviation = float(np.linalg.norm(ev["chunks"] - best["chunks"], axis=-1).mean())
            entries.append(dict(n_steps=n, network_evaluations=n - 1, latency_ms=latency,
                                mode_distance=ev["mode_distance"], neither=ev["shares"]["neither"],
                                deviation_from_max_steps=deviation))
            rows.append([backend, n, n - 1, latency, ev["mode_distance"], ev["shares"]["neither"], deviation])
        results_by_backend[backend] = entries

    reference = results_by_backend["reference"]
    threshold = ACCEPTABLE_DISTANCE_RATIO * reference[-1]["mode_distance"]
    min_acceptable = next(
        e["n_steps"] for e in reference
        if e["mode_distance"] <= threshold and e["neither"] <= reference[-1]["neither"] + ACCEPTABLE_EXTRA_NEITHER
    )
    rule = (f"mode_distance <= {ACCEPTABLE_DISTANCE_RATIO} x its n={n_steps[-1]} value and neither <= its "
            f"n={n_steps[-1]} value + {ACCEPTABLE_EXTRA_NEITHER} (reference backend)")
    results = {
        "experiment": NAME,
        "question": "What is the minimum number of DDIM steps for acceptable action quality, and what does it cost?",
        "n_steps_meaning": "n = points of the lesson's linspace(T-1, 0, n); network evaluations = n - 1",
        "config": dict(seed=seed, device=str(dev), train_steps=train_steps, hidden=hidden, batch_size=batch_size,
                       n_demos=n_demos, n_eval=n_eval, chunk_size=multimodal.CHUNK_SIZE, n_steps=n_steps,
                       latency_batch_size=1, repeats=repeats),
        "metric": "mode_distance: mean distance of a sampled path to the nearer mode prototype (lower is better); "
                  "neither: share of paths near neither mode; deviation_from_max_steps: mean distance to the "
                  f"{n_steps[-1]}-step path from the same initial noise; latency_ms: median ms per sample() at batch 1",
        "backends": results_by_backend,
        "skipped_backends": skipped,
        "acceptable_rule": rule,
        "min_acceptable_n_steps": min_acceptable,
    }

    fig, (ax_lat, ax_n) = C.figure(2)
    for backend, entries in results_by_backend.items():
        style = BACKEND_STYLES.get(backend, "o-")
        lat = [e["latency_ms"] for e in entries]
        dist = [e["mode_distance"] for e in entries]
        ax_lat.plot(lat, dist, style, label=backend)
        for e in entries:
            ax_lat.annotate(f"n={e['n_steps']}", (e["latency_ms"], e["mode_distance"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
    ax_lat.axhline(threshold, color="0.5", ls="--", lw=1, label=f"{ACCEPTABLE_DISTANCE_RATIO} x the n={n_steps[-1]} value")
    ax_lat.set_xscale("log")
    ax_lat.set_ylim(0, 1.5 * max(threshold, *(e["mode_distance"] for es in results_by_backend.values() for e in es)))
    ax_lat.set_xlabel(f"latency per sample(), batch 1 [ms] ({dev.type})")
    ax_lat.set_ylabel("mean distance to nearer mode (lower is better)")
    ax_lat.set_title("quality vs latency")
    ax_lat.legend(fontsize=8)
    evals = [e["network_evaluations"] for e in reference]
    ax_n.plot(evals, [100 * e["neither"] for e in reference], "o-", label="samples near neither mode [%]")
    ax_n.plot(evals, [100 * e["deviation_from_max_steps"] for e in reference], "s-",
              label=f"distance to the {n_steps[-1]}-step result [x0.01]")
    ax_n.set_xscale("log")
    ax_n.set_xticks(evals, [f"{n}\n({n + 1} pts)" for n in evals])
    ax_n.set_xlabel("network evaluations (lesson n_steps = evaluations + 1)")
    ax_n.set_title(f"quality vs steps (reference); min acceptable n = {min_acceptable}")
    ax_n.legend(fontsize=8)
    results["files"] = {"plot": str(C.save_figure(fig, out / f"{NAME}.png")), "json": str(out / f"{NAME}.json")}
    C.write_json(out / f"{NAME}.json", results)

    print(TITLE)
    print("n = the lesson's n_steps (points of linspace(99, 0, n)); the network runs n - 1 times")
    C.print_table(["backend", "n", "evals", "ms/sample", "dist to mode", "neither", f"dev from n={n_steps[-1]}"], rows)
    for backend, reason in skipped.items():
        print(f"  {backend}: skipped ({reason})")
    print(f"minimum acceptable n_steps: {min_acceptable} ({min_acceptable - 1} evaluations); rule: {rule}")
    print(f"wrote {results['files']['plot']} and {results['files']['json']}")
    return results
