"""The demo: train a small Diffusion Policy on exercise 1's two-mode task, sample it with the
fastest backend present, and show both modes and the latency of every backend.

With a fixed seed every number it prints is the same on every run on the same machine, except
the timings (training time and latencies), which are marked as such.
"""

from __future__ import annotations

import time

from . import _common as C
from . import multimodal, tasks

NAME = "demo"
TITLE = "dp-fast demo: Diffusion Policy keeps both ways around the obstacle"
QUICK = dict(train_steps=100, hidden=32, n_demos=256, n_eval=32, repeats=3)


def run(*, out="out/demo", device="cpu", seed=0, train_steps=2000, hidden=64, batch_size=128, n_demos=1000,
        n_eval=200, n_steps=11, repeats=20, progress=True) -> dict:
    """Trains the lesson's policy for ``train_steps`` steps, samples ``n_eval`` paths with
    ``backend="auto"`` (``n_steps`` lesson DDIM points = n_steps - 1 evaluations), times one batch-1
    ``sample()`` on every usable backend. Writes demo.png/.json."""
    rng = C.seed_everything(seed)
    dev = C.resolve_device(device)
    out = C.output_dir(out)
    obs, actions = multimodal.obstacle_data(n_demos, rng, dev)
    eval_obs = tasks.sample_starts(n_eval, rng)
    t0 = time.perf_counter()
    policy, losses = multimodal.train_diffusion(obs, actions, hidden=hidden, train_steps=train_steps, batch_size=batch_size,
                                        progress=progress)
    train_seconds = time.perf_counter() - t0
    final_loss = float(sum(losses[-50:]) / len(losses[-50:]))

    one_obs = C.to_device(eval_obs[:1], policy)
    backends, skipped = C.usable_backends(policy, one_obs)
    auto = C.auto_backend_name(policy)
    ev = multimodal.evaluate_modes(policy, eval_obs, n_steps=n_steps, seed=seed, backend="auto")
    latency = {b: C.time_sample(policy, one_obs, n_steps=n_steps, backend=b, repeats=repeats) for b in backends}

    results = {
        "experiment": NAME,
        "config": dict(seed=seed, device=str(dev), train_steps=train_steps, hidden=hidden, batch_size=batch_size,
                       n_demos=n_demos, n_eval=n_eval, chunk_size=multimodal.CHUNK_SIZE, n_steps=n_steps,
                       n_network_evaluations=n_steps - 1, parameters=C.count_parameters(policy)),
        "deterministic": {
            "final_loss": final_loss,
            "auto_backend": auto,
            "available_backends": C.available_backends(),
            "shares": ev["shares"],
            "collision_rate": ev["collision_rate"],
            "mode_distance": ev["mode_distance"],
        },
        "timing": {
            "train_seconds": train_seconds,
            "latency_ms_batch1": latency,
            "speedup_vs_reference": {b: latency["reference"] / ms for b, ms in latency.items()},
        },
        "skipped_backends": skipped,
    }

    fig, (ax_paths, ax_lat) = C.figure(2)
    demos = (obs[:60].cpu().numpy(), actions[:60].cpu().numpy())
    multimodal.plot_paths(ax_paths, eval_obs, ev["chunks"], ev["mode"],
                          f"{n_eval} samples, backend '{auto}'", demos)
    ax_lat.bar(list(latency), list(latency.values()), color="tab:blue")
    for i, ms in enumerate(latency.values()):
        ax_lat.annotate(f"{ms:.2f} ms", (i, ms), ha="center", va="bottom")
    ax_lat.set_ylabel(f"ms per sample(), batch 1, {n_steps - 1} evaluations ({dev.type})")
    ax_lat.set_title("latency per backend")
    results["files"] = {"plot": str(C.save_figure(fig, out / f"{NAME}.png")), "json": str(out / f"{NAME}.json")}
    C.write_json(out / f"{NAME}.json", results)

    shares = ev["shares"]
    print(TITLE)
    print(f"seed {seed}, device {dev}, LessonUNet1D hidden {hidden} ({C.count_parameters(policy):,} parameters), "
          f"{train_steps} training steps, final loss {final_loss:.4f}")
    print(f"sampling backend: auto -> {auto} (available: {', '.join(C.available_backends())})")
    print(f"{n_eval} sampled paths, n_steps={n_steps} ({n_steps - 1} network evaluations): "
          f"left {shares['left']:.1%}  right {shares['right']:.1%}  neither {shares['neither']:.1%}  "
          f"(through the obstacle: {ev['collision_rate']:.1%})")
    print(f"timings (vary from run to run): training {train_seconds:.1f} s; per sample(), batch 1:")
    C.print_table(["backend", "ms", "speed-up"],
                  [[b, ms, f"{latency['reference'] / ms:.2f}x"] for b, ms in latency.items()])
    for b, reason in skipped.items():
        print(f"  {b}: skipped ({reason})")
    print(f"wrote {results['files']['plot']} and {results['files']['json']}")
    return results
