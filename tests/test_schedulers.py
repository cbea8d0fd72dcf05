"""The schedulers against diffusers (same inputs, same noise) and the lesson's sampler against
the lesson's own code and a float64 computation of its formula."""

import itertools
import math

import pytest
import torch

from dp_fast import DiffusionPolicy
from dp_fast.models import LessonUNet1D
from dp_fast.ops.scheduler_step import scheduler_step_ref
from dp_fast.schedulers import DDIMScheduler, DDPMScheduler, LessonDDIMScheduler

import lesson_original

diffusers = pytest.importorskip("diffusers", reason="diffusers is a test dependency: pip install -e '.[test]'")

BETA_SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2"]
PREDICTION_TYPES = ["epsilon", "sample", "v_prediction"]
CLIPS = [(False, 1.0), (True, 1.0), (True, 0.5)]


def _run_both(ours, theirs, n_inference, step_kwargs, seed, shape=(3, 16, 2)):
    """Runs a whole denoising trajectory through both schedulers with the same model outputs
    and generator seeds, feeding each its own previous sample. Returns the largest difference."""
    ours.set_timesteps(n_inference)
    theirs.set_timesteps(n_inference)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    g = torch.Generator().manual_seed(seed)
    x_ours = torch.randn(shape, generator=g) * 2  # wide enough that clip_sample clips
    x_theirs = x_ours.clone()
    g_ours, g_theirs = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 1)
    worst = 0.0
    for t in ours.timesteps.tolist():
        m = torch.randn(shape, generator=g) * 1.5
        a = ours.step(m, t, x_ours, generator=g_ours, **step_kwargs)
        b = theirs.step(m, t, x_theirs, generator=g_theirs, **step_kwargs)
        worst = max(worst, (a.prev_sample - b.prev_sample).abs().max().item())
        worst = max(worst, (a.pred_original_sample - b.pred_original_sample).abs().max().item())
        x_ours, x_theirs = a.prev_sample, b.prev_sample
    return worst


@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("clip_sample,clip_sample_range", CLIPS)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_matches_diffusers(beta_schedule, prediction_type, clip_sample, clip_sample_range, eta):
    for set_alpha_to_one, steps_offset, n in [(True, 0, 16), (False, 1, 10)]:
        cfg = dict(
            num_train_timesteps=100,
            beta_schedule=beta_schedule,
            prediction_type=prediction_type,
            clip_sample=clip_sample,
            clip_sample_range=clip_sample_range,
            set_alpha_to_one=set_alpha_to_one,
            steps_offset=steps_offset,
        )
        worst = _run_both(DDIMScheduler(**cfg), diffusers.DDIMScheduler(**cfg), n, {"eta": eta}, seed=n)
        assert worst <= 1e-6, (cfg, worst)


@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("clip_sample,clip_sample_range", CLIPS)
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_small_log", "fixed_large"])
def test_ddpm_matches_diffusers(beta_schedule, prediction_type, clip_sample, clip_sample_range, variance_type):
    for steps_offset, n in [(0, 100), (1, 16)]:
        cfg = dict(
            num_train_timesteps=100,
            beta_schedule=beta_schedule,
            prediction_type=prediction_type,
            clip_sample=clip_sample,
            clip_sample_range=clip_sample_range,
            variance_type=variance_type,
            steps_offset=steps_offset,
        )
        worst = _run_both(DDPMScheduler(**cfg), diffusers.DDPMScheduler(**cfg), n, {}, seed=n)
        assert worst <= 1e-6, (cfg, worst)


def test_leading_spacing_of_16_ddim_steps_of_100():
    sched = DDIMScheduler(num_train_timesteps=100)
    sched.set_timesteps(16)
    assert sched.timesteps.tolist() == list(range(90, -1, -6))


@pytest.mark.parametrize("cls", [DDIMScheduler, DDPMScheduler])
@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_add_noise_matches_diffusers(cls, beta_schedule):
    ours, theirs = cls(beta_schedule=beta_schedule), getattr(diffusers, cls.__name__)(beta_schedule=beta_schedule)
    x0, noise = torch.randn(5, 16, 7), torch.randn(5, 16, 7)
    t = torch.tensor([0, 1, 500, 998, 999])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), rtol=0, atol=0)
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs",
    [dict(thresholding=True), dict(timestep_spacing="trailing"), dict(prediction_type="x"), dict(beta_schedule="sigmoid")],
)
@pytest.mark.parametrize("cls", [DDIMScheduler, DDPMScheduler])
def test_unsupported_configurations_raise(cls, kwargs):
    with pytest.raises((ValueError, NotImplementedError), match=next(iter(kwargs))):
        cls(**kwargs)


def test_ddpm_rejects_learned_variance():
    with pytest.raises(NotImplementedError, match="variance_type"):
        DDPMScheduler(variance_type="learned_range")


def test_step_before_set_timesteps_and_foreign_timestep_raise():
    with pytest.raises(ValueError, match="set_timesteps"):
        DDIMScheduler().step(torch.randn(1, 4, 2), 10, torch.randn(1, 4, 2))
    sched = DDPMScheduler(num_train_timesteps=100)
    sched.set_timesteps(10)
    with pytest.raises(ValueError, match="not in this scheduler's timesteps"):
        sched.step(torch.randn(1, 4, 2), 55, torch.randn(1, 4, 2))


# -- the coefficient tables that the fused kernels read ------------------------------------------


def _scheduler_cases():
    for bs, pt, (clip, rng) in itertools.product(BETA_SCHEDULES, PREDICTION_TYPES, CLIPS):
        common = dict(num_train_timesteps=100, beta_schedule=bs, prediction_type=pt, clip_sample=clip, clip_sample_range=rng)
        for eta in (0.0, 0.7):
            yield DDIMScheduler(**common, set_alpha_to_one=eta == 0.0), {"eta": eta}, 16
        yield DDPMScheduler(**common, variance_type="fixed_small_log" if clip else "fixed_small"), {}, 20
    yield LessonDDIMScheduler(100), {}, 11


@pytest.mark.parametrize("case", list(_scheduler_cases()), ids=lambda c: type(c[0]).__name__)
def test_step_coefficients_reproduce_step(case):
    """Row i of step_coefficients(), applied by scheduler_step_ref in float64, gives step i."""
    sched, step_kwargs, n = case
    sched.set_timesteps(n)
    table = sched.step_coefficients(**step_kwargs)
    assert table.shape == (len(sched.timesteps), 8) and table.dtype == torch.float64
    x = torch.randn(2, 8, 3, dtype=torch.float64) * 2
    for i, t in enumerate(sched.timesteps.tolist()):
        m = torch.randn_like(x) * 1.5
        expected = sched.step(m.float(), t, x.float(), generator=torch.Generator().manual_seed(i), **step_kwargs).prev_sample
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(i)).double()
        got = scheduler_step_ref(m, x, table[i], noise, sched.clip_range)
        torch.testing.assert_close(got.float(), expected, rtol=2e-5, atol=2e-5)
        x = got


# -- the lesson's sampler -----------------------------------------------------------------------------


def test_lesson_sampler_is_the_lessons_sampler_bit_for_bit():
    torch.manual_seed(0)
    lesson = lesson_original.DiffusionPolicy(action_dim=7, obs_dim=20)
    lesson.model = lesson_original.ConditionalUNet1D(7, 20, hidden=32)  # the lesson's class, smaller
    ours = DiffusionPolicy(action_dim=7, obs_dim=20, hidden=32)
    ours.model.load_state_dict(lesson.model.state_dict(), strict=True)
    obs = torch.randn(3, 20)
    for n_steps in (2, 11, 20, 100):
        torch.manual_seed(n_steps)
        expected = lesson.sample(obs, n_steps=n_steps)
        torch.manual_seed(n_steps)
        got = ours.sample(obs, n_steps=n_steps, backend="reference")
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_lesson_sampler_matches_float64_formula():
    """x0 = (x - sqrt(1 - ab_k) eps) / sqrt(ab_k); x = sqrt(ab_j) x0 + sqrt(1 - ab_j) eps over
    k, j consecutive points of linspace(T-1, 0, n), with ab = cumprod(1 - linspace(1e-4, .02, T))."""
    torch.manual_seed(1)
    policy = DiffusionPolicy(action_dim=3, obs_dim=5, chunk_size=8, hidden=64)
    model64 = LessonUNet1D(3, 5, 64).double()
    model64.load_state_dict(policy.model.state_dict())
    obs, noise = torch.randn(2, 5), torch.randn(2, 8, 3)
    n = 11
    got = policy.sample(obs, n_steps=n, noise=noise, backend="reference")

    alpha_bars = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 100, dtype=torch.float64), 0)
    points = [int(math.floor(99 - i * 99 / (n - 1) + 1e-9)) for i in range(n)]
    x = noise.double()
    for k, j in zip(points[:-1], points[1:]):
        eps = model64(x, torch.full((2,), k), obs.double())
        x0 = (x - math.sqrt(1 - alpha_bars[k]) * eps) / math.sqrt(alpha_bars[k])
        x = math.sqrt(alpha_bars[j]) * x0 + math.sqrt(1 - alpha_bars[j]) * eps
    assert (got.double() - x).abs().max().item() < 1e-4


def test_lesson_scheduler_rejects_too_few_or_too_many_steps():
    sched = LessonDDIMScheduler(100)
    for bad in (1, 101):
        with pytest.raises(ValueError, match="n_steps"):
            sched.set_timesteps(bad)


# -- the fast path's step noise: every step's draw at once (dp_fast.schedulers._common.randn_rows) --


def _rows_as_drawn_one_by_one(n, rows, shape, generator, device, dtype):
    """What the reference draws, step by step: randn per drawn row, NaN in the others."""
    from dp_fast.schedulers._common import randn

    expected = torch.full((n, *shape), float("nan"), dtype=dtype, device=device)
    for i in rows:
        expected[i] = randn(shape, generator, device, dtype)
    return expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("rows", [[0, 1, 2, 3], [0, 2, 3], [1], []], ids=["all", "gap", "one", "none"])
@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("gen", ["cpu", "device", "global"])
def test_randn_rows_draws_what_randn_draws_row_by_row(gen, device, rows, dtype):
    """The fast path's step noise (randn_rows: a CPU generator's rows drawn on the CPU and copied
    at once, another's or the global RNG's drawn straight into the buffer) is the noise the
    reference's schedulers draw step by step (randn), to the bit, in the same order; the rows
    that draw nothing are left as they were (NaN here)."""
    from dp_fast.schedulers._common import randn_rows

    shape = (2, 16, 7)  # (B, T, A)

    def generator():
        if gen == "global":
            torch.manual_seed(7)
            if device == "cuda":
                torch.cuda.manual_seed(7)
            return None
        return torch.Generator(device=device if gen == "device" else "cpu").manual_seed(7)

    expected = _rows_as_drawn_one_by_one(5, rows, shape, generator(), device, dtype)
    out = torch.full((5, *shape), float("nan"), dtype=dtype, device=device)
    randn_rows(out, rows, generator())
    assert torch.equal(out.isnan(), expected.isnan())
    assert torch.equal(out.nan_to_num(), expected.nan_to_num())


def test_randn_rows_refuses_a_generator_of_another_device():
    """A generator of another device than the buffer's (a CUDA one for a CPU buffer) is an error
    that says so, as randn's is, before anything is drawn."""
    from types import SimpleNamespace

    from dp_fast.schedulers._common import randn_rows

    out = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="a cuda generator cannot make a tensor on cpu"):
        randn_rows(out, [0, 1], SimpleNamespace(device=torch.device("cuda")))
