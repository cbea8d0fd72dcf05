"""The exercises and the demo, in tiny configurations: their metrics, their toy tasks, and that
each run writes a loadable plot and the JSON it promises. CPU only, seconds each."""

import json

import matplotlib.image
import numpy as np
import pytest
import torch

from dp_fast import DiffusionPolicy, _sampler
from dp_fast.experiments import EXERCISES, _common, chunk, demo, history, multimodal, steps, tasks

ALL = [*EXERCISES.values(), demo]


@pytest.fixture
def reference_only(monkeypatch):
    """Time only the reference backend: under TRITON_INTERPRET (set by conftest without a GPU) the
    Triton backend would run, interpreted, on the CPU, which is far too slow for these tests."""
    monkeypatch.setattr(_common, "available_backends", lambda: ["reference"])


def _run(module, tmp_path, **overrides):
    return module.run(out=tmp_path, progress=False, **{**module.QUICK, **overrides})


def _check_outputs(module, tmp_path, results):
    png, js = tmp_path / f"{module.NAME}.png", tmp_path / f"{module.NAME}.json"
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert image.std() > 0.01  # something is drawn
    on_disk = json.loads(js.read_text())
    assert on_disk["experiment"] == module.NAME
    assert on_disk["config"]["seed"] == 0
    assert on_disk["files"] == {"plot": str(png), "json": str(js)}
    assert on_disk == json.loads(json.dumps(results, default=_common._json_default))
    return on_disk


# -- the toy tasks and metrics -------------------------------------------------------------------


def test_mode_metric_accepts_demonstrated_modes_and_rejects_their_average():
    rng = np.random.default_rng(0)
    obs, actions, side = tasks.chunk_demos(200, 16, rng)
    cls = tasks.classify_modes(obs, actions)
    np.testing.assert_array_equal(cls["mode"], np.where(side < 0, 0, 1))
    assert not cls["collides"].any()
    assert tasks.mode_shares(cls["mode"]) == {"left": 0.5, "right": 0.5, "neither": 0.0}
    # what MSE regression converges to: the mean of the two modes, straight through the obstacle
    protos = tasks.mode_prototypes(obs, 16)
    average = tasks.classify_modes(obs, protos.mean(0))
    assert (average["mode"] == -1).all() and average["collides"].all()


def test_navigation_env_following_a_demonstration_reaches_the_goal_and_a_straight_line_collides():
    rng = np.random.default_rng(0)
    env = tasks.NavigationEnv(8, drift=0.0, rng=rng)
    s = np.arange(1, chunk.EPISODE_LEN + 1) / chunk.EPISODE_LEN
    path = tasks.obstacle_path(env.pos.copy(), np.ones(8), np.full(8, 0.7), s)
    for k in range(chunk.EPISODE_LEN):
        env.step(path[:, k])
    m = env.metrics()
    assert m["success"].all() and not m["collided"].any()
    assert m["jerk"].max() < 1e-4  # a demonstrated path is smooth

    straight = tasks.NavigationEnv(8, drift=0.0, rng=np.random.default_rng(0))
    line = straight.pos[:, None] * (1 - s[None, :, None]) + tasks.GOAL * s[None, :, None]
    for k in range(chunk.EPISODE_LEN):
        straight.step(line[:, k])
    m = straight.metrics()
    assert m["reached"].all() and m["collided"].all() and not m["success"].any()


def test_navigation_env_drift_accumulates_over_an_open_loop_chunk():
    env = tasks.NavigationEnv(4, drift=0.01, rng=np.random.default_rng(1))
    start = env.observe()
    for _ in range(5):
        env.step(start)  # "stay here", five times without re-planning
    np.testing.assert_allclose(env.pos, start + 5 * env.drift)


def test_window_demos_continue_from_the_observed_position():
    obs, actions = tasks.window_demos(3, 10, 4, np.random.default_rng(0))
    assert obs.shape == (30, 2) and actions.shape == (30, 4, 2)
    # the first action of window t is the observation of window t + 1 (same episode)
    np.testing.assert_allclose(actions.reshape(3, 10, 4, 2)[:, :-1, 0], obs.reshape(3, 10, 2)[:, 1:])
    np.testing.assert_allclose(actions.reshape(3, 10, 4, 2)[:, -1, -1], np.tile(tasks.GOAL, (3, 1)), atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_tracking_windows_actions_are_the_future_of_the_last_observation(k):
    true, observed = tasks.tracking_episodes(5, 20, np.random.default_rng(0))
    obs, actions = tasks.tracking_windows(true, true, k, 6)  # noiseless: observed == true
    assert obs.shape[1:] == (k, 2) and actions.shape[1:] == (6, 2)
    velocity = true[:, 1] - true[:, 0]
    per_episode = len(obs) // 5
    expected = obs[:, -1:, :] + np.repeat(velocity, per_episode, 0)[:, None] * np.arange(1, 7)[None, :, None]
    np.testing.assert_allclose(actions, expected, atol=1e-12)
    assert (observed - true).std() == pytest.approx(tasks.TRACK_OBS_NOISE, rel=0.2)


def test_rollout_executes_the_first_actions_of_each_chunk_in_order():
    """An oracle that reads the true future gives zero tracking error only if the rollout, the
    environment's clock and the chunk's time axis line up."""
    env = tasks.TrackingEnv(6, history=2, length=30, rng=np.random.default_rng(0), warmup=4)

    class Oracle:
        def sample(self, obs, n_steps, generator):
            assert obs.shape == (6, 2, 2)
            return torch.as_tensor(env.true[:, env.t + 1 : env.t + 9])

    _common.rollout(Oracle(), env, n_exec=4, n_steps=10, max_steps=env.steps_left, seed=0, device="cpu",
                    progress=False)
    m = env.metrics(tolerance=1e-9)
    assert len(env.gripper) == 30 - 4
    assert m["success"].all() and m["error"].max() == 0


def test_bc_baseline_has_the_same_network_size_as_the_diffusion_policy():
    bc = _common.BCPolicy(2, 2, 16, hidden=32)
    dp = DiffusionPolicy(2, 2, 16, hidden=32)
    assert _common.count_parameters(bc) == _common.count_parameters(dp)
    assert bc.sample(torch.zeros(3, 2)).shape == (3, 16, 2)


def test_training_and_sampling_repeat_exactly_with_a_seed():
    def once():
        rng = _common.seed_everything(7)
        obs, actions = multimodal.obstacle_data(64, rng, "cpu")
        policy, losses = multimodal.train_diffusion(obs, actions, hidden=16, train_steps=20, batch_size=16,
                                                    progress=False)
        return losses, _common.sample_batched(policy, obs[:4], n_steps=5, seed=3)

    (l1, s1), (l2, s2) = once(), once()
    assert l1 == l2
    np.testing.assert_array_equal(s1, s2)


# -- the experiments ----------------------------------------------------------------------------


def test_exercise1_bc_averages_the_modes_and_diffusion_keeps_both(tmp_path):
    results = _check_outputs(multimodal, tmp_path, _run(multimodal, tmp_path, train_steps=800, batch_size=64,
                                                         n_eval=100))
    bc, dp = results["policies"]["bc"], results["policies"]["diffusion"]
    assert bc["neither"] > 0.9 and bc["collision_rate"] > 0.9
    assert dp["left"] > 0.25 and dp["right"] > 0.25
    assert dp["neither"] < 0.5 and dp["collision_rate"] < 0.3
    assert results["config"]["parameters"]["bc"] == results["config"]["parameters"]["diffusion"]


def test_exercise2_measures_quality_and_latency_for_every_n_and_backend(tmp_path, monkeypatch):
    # A second "backend" that is the reference loop under another name: the experiment must
    # measure it too, and find the same quality from the same noise.
    monkeypatch.setattr(_common, "available_backends", lambda: ["reference", "cuda"])
    monkeypatch.setitem(_sampler._RUNNERS, "cuda", _sampler.reference_loop)
    results = _check_outputs(steps, tmp_path, _run(steps, tmp_path, n_steps=(2, 5, 10)))
    assert set(results["backends"]) == {"reference", "cuda"}
    for entries in results["backends"].values():
        assert [e["n_steps"] for e in entries] == [2, 5, 10]
        assert [e["network_evaluations"] for e in entries] == [1, 4, 9]
        assert all(e["latency_ms"] > 0 for e in entries)
        assert entries[-1]["deviation_from_max_steps"] == 0
        assert entries[0]["deviation_from_max_steps"] > 0
    ref, other = results["backends"]["reference"], results["backends"]["cuda"]
    assert [e["mode_distance"] for e in ref] == [e["mode_distance"] for e in other]
    assert results["min_acceptable_n_steps"] in (2, 5, 10)


def test_exercise3_reports_success_and_jerk_per_chunk_size(tmp_path):
    results = _check_outputs(chunk, tmp_path, _run(chunk, tmp_path))
    rows = results["chunk_sizes"]
    assert [r["chunk_size"] for r in rows] == [4, 8]
    assert [r["executed_per_plan"] for r in rows] == [2, 4]
    for r in rows:
        assert 0 <= r["success"] <= r["reached"] <= 1
        assert r["jerk"] > 0


def test_exercise4_history_reduces_tracking_error(tmp_path):
    results = _check_outputs(history, tmp_path, _run(history, tmp_path, train_steps=1000, histories=(1, 4)))
    errors = {r["history"]: r["error"] for r in results["histories"]}
    assert errors[4] < 0.5 * errors[1]  # one noisy position cannot tell where the target is heading


def test_demo_prints_the_same_numbers_every_time(tmp_path, capsys, reference_only):
    first = _run(demo, tmp_path / "a")
    out1 = capsys.readouterr().out
    second = _run(demo, tmp_path / "b")
    out2 = capsys.readouterr().out
    assert first["deterministic"] == second["deterministic"]
    assert first["deterministic"]["auto_backend"] == "reference"
    assert set(first["timing"]["latency_ms_batch1"]) == {"reference"}

    untimed1, untimed2 = out1.split("timings")[0], out2.split("timings")[0]
    assert untimed1 == untimed2 and "left" in untimed1 and "final loss" in untimed1
    _check_outputs(demo, tmp_path / "a", first)


@pytest.mark.parametrize("module", ALL, ids=lambda m: m.NAME)
def test_quick_configuration_is_a_real_subset_of_run_arguments(module):
    import inspect

    assert set(module.QUICK) <= set(inspect.signature(module.run).parameters)
