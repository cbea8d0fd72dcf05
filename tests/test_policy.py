"""DiffusionPolicy: a drop-in for the lesson's class, wrapping Chi et al.'s network, deterministic
sampling, and clear errors on bad input."""

import numpy as np
import pytest
import torch

import dp_fast
from dp_fast import DiffusionPolicy
from dp_fast.models import ConditionalUnet1D, LessonUNet1D
from dp_fast.schedulers import DDIMScheduler, DDPMScheduler

import lesson_original


def _chi_policy(scheduler, n_obs_steps=2, obs_dim=3, horizon=8):
    model = ConditionalUnet1D(2, global_cond_dim=obs_dim * n_obs_steps, diffusion_step_embed_dim=16, down_dims=(16, 32), kernel_size=5, cond_predict_scale=True)
    return DiffusionPolicy.from_model(model, scheduler, chunk_size=horizon, n_obs_steps=n_obs_steps)


def _ddpm():
    return DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True)


def test_train_step_is_the_lessons_train_step():
    torch.manual_seed(0)
    lesson = lesson_original.DiffusionPolicy(action_dim=2, obs_dim=4, chunk_size=8)
    ours = DiffusionPolicy(action_dim=2, obs_dim=4, chunk_size=8)
    ours.model.load_state_dict(lesson.model.state_dict())
    opt_l = torch.optim.Adam(lesson.model.parameters(), lr=1e-3)
    opt_o = torch.optim.Adam(ours.model.parameters(), lr=1e-3)
    obs, actions = torch.randn(6, 4), torch.randn(6, 8, 2)
    for i in range(3):
        torch.manual_seed(100 + i)
        loss_l = lesson.train_step(obs, actions, opt_l)
        torch.manual_seed(100 + i)
        loss_o = ours.train_step(obs, actions, opt_o)
        assert loss_o == pytest.approx(loss_l, rel=1e-6)


def test_training_reduces_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    policy = _chi_policy(_ddpm())
    opt = torch.optim.Adam(policy.model.parameters(), lr=3e-3)
    obs = torch.randn(16, 2, 3)
    actions = torch.tanh(obs[:, :1, :2] * torch.linspace(0.2, 1.0, 8)[None, :, None])  # a smooth chunk per obs
    losses = [policy.train_step(obs, actions, opt) for _ in range(100)]
    assert sum(losses[-20:]) / 20 < 0.7 * sum(losses[:10]) / 10


@pytest.mark.parametrize("scheduler", [_ddpm(), DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")], ids=["ddpm", "ddim"])
def test_sample_is_deterministic_given_noise_and_generator(scheduler):
    torch.manual_seed(0)
    policy = _chi_policy(scheduler)
    obs = torch.randn(3, 2, 3)
    a = policy.sample(obs, n_steps=10, generator=torch.Generator().manual_seed(7))
    b = policy.sample(obs, n_steps=10, generator=torch.Generator().manual_seed(7))
    c = policy.sample(obs, n_steps=10, generator=torch.Generator().manual_seed(8))
    assert a.shape == (3, 8, 2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    noise = torch.randn(3, 8, 2)
    d = policy.sample(obs, n_steps=10, noise=noise, generator=torch.Generator().manual_seed(1))
    e = policy.sample(obs, n_steps=10, noise=noise, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(d, e, rtol=0, atol=0)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_chi_policy_sample_matches_a_diffusers_driven_loop(eta):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    cfg = dict(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    policy = _chi_policy(DDIMScheduler(**cfg), n_obs_steps=1)
    policy.eta = eta
    obs, noise = torch.randn(2, 3), torch.randn(2, 8, 2)
    got = policy.sample(obs, n_steps=16, noise=noise, generator=torch.Generator().manual_seed(3))

    theirs = diffusers.DDIMScheduler(**cfg)
    theirs.set_timesteps(16)
    g, x = torch.Generator().manual_seed(3), noise.clone()
    for t in theirs.timesteps:
        x = theirs.step(policy.model(x, t, global_cond=obs), t, x, eta=eta, generator=g).prev_sample
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-5)


def test_sample_returns_on_the_observation_device_and_dtype():
    policy = DiffusionPolicy(2, 4, chunk_size=8, hidden=16)
    out = policy.sample(torch.randn(1, 4), n_steps=5)
    assert out.device == torch.device("cpu") and out.dtype == torch.float32 and out.shape == (1, 8, 2)


def test_auto_backend_and_available_backends():
    assert "reference" in dp_fast.available_backends()
    policy = DiffusionPolicy(2, 4, chunk_size=8, hidden=16)
    obs, noise = torch.randn(2, 4), torch.randn(2, 8, 2)
    torch.testing.assert_close(
        policy.sample(obs, 6, noise=noise, backend="auto"), policy.sample(obs, 6, noise=noise, backend="reference"), rtol=1e-4, atol=1e-4
    )


def test_auto_rule_picks_the_measured_fastest_backend_on_a_gpu(monkeypatch):
    from dp_fast import _sampler
    from dp_fast.models import ConditionalUnet1D, LessonUNet1D

    fake = lambda *a: None  # noqa: E731
    lesson, chi = LessonUNet1D(2, 4, hidden=16), ConditionalUnet1D(2, global_cond_dim=4, down_dims=(16, 32))
    monkeypatch.setattr(_sampler, "_RUNNERS", {"reference": _sampler.reference_loop, "triton": fake, "cuda": fake})
    small = _sampler.AUTO_CUDA_MAX_BATCH
    assert [_sampler.auto_backend("cuda", b, chi) for b in (1, small, 64)] == ["triton"] * 3
    assert [_sampler.auto_backend("cuda:0", b, lesson) for b in (1, small, small + 1, 64)] == ["triton"] * 4
    assert _sampler.auto_backend("cpu", 1, lesson) == _sampler.auto_backend("cpu", 1, chi) == "reference"
    monkeypatch.setattr(_sampler, "_RUNNERS", {"reference": _sampler.reference_loop, "cuda": fake})  # no Triton
    assert [_sampler.auto_backend("cuda", b, chi) for b in (1, small, small + 1)] == ["cuda", "cuda", "reference"]

    def cannot(policy, cond, x, n_steps, generator):
        raise NotImplementedError("no such model here")

    monkeypatch.setattr(_sampler, "_RUNNERS", {"reference": _sampler.reference_loop, "cuda": cannot})
    assert _sampler.auto_backend("cuda:0", 2) == "cuda"
    policy = DiffusionPolicy(2, 4, chunk_size=8, hidden=16)
    run = _sampler.resolve_backend("auto", policy, torch.device("cuda"), batch=3)
    obs, noise = torch.randn(3, 4), torch.randn(3, 8, 2)
    with pytest.warns(UserWarning, match="cuda backend cannot serve this request \\(no such model here\\); using the reference"):
        got = run(policy, policy._condition(obs), noise.clone(), 5, None)
    torch.testing.assert_close(got, policy.sample(obs, 5, noise=noise, backend="reference"))


# -- bad input -------------------------------------------------------------------------------------


@pytest.fixture
def policy():
    return DiffusionPolicy(2, 4, chunk_size=8, hidden=16, n_obs_steps=2)


@pytest.mark.parametrize(
    "obs,error,match",
    [
        (torch.randn(3, 4), ValueError, r"\(B, n_obs_steps, obs_dim\) = \(B, 2, 4\)"),
        (torch.randn(3, 2, 5), ValueError, r"\(B, 2, 4\)"),
        (torch.randn(0, 2, 4), ValueError, r"obs must be shaped .* with B >= 1, got \(0, 2, 4\)"),
        (torch.randn(3, 2, 4, dtype=torch.float64), TypeError, "float32"),
        (torch.randint(0, 3, (3, 2, 4)), TypeError, "float32"),
        (torch.full((3, 2, 4), float("nan")), ValueError, "NaN or Inf"),
        (torch.tensor([[[1.0, 2, 3, float("inf")]] * 2] * 3), ValueError, "NaN or Inf"),
        ([[0.0] * 4] * 2, TypeError, "torch.Tensor"),
    ],
)
def test_bad_observations_raise_clear_errors(policy, obs, error, match):
    with pytest.raises(error, match=match):
        policy.sample(obs)
    if torch.is_tensor(obs) and obs.dim() == 3 and obs.shape[0] == 3:
        with pytest.raises(error, match=match):
            policy.train_step(obs, torch.randn(3, 8, 2), torch.optim.SGD(policy.model.parameters(), lr=0.1))


def test_sample_checks_its_inputs_values_with_one_host_synchronisation(policy, sample_events):
    """obs and the given noise are checked for NaN and Inf together (one verdict for the host,
    not one per tensor); the error names the bad one. On the CPU the verdict is waited on before
    any backend work (on a GPU after it is queued: test_fast_backends.py)."""
    obs = torch.randn(3, 2, 4)
    policy.sample(obs, n_steps=2, noise=torch.randn(3, 8, 2), backend="reference")
    policy.sample(obs, n_steps=2, backend="reference")  # drawn noise: only obs to check
    assert sample_events == [["obs", "noise"], "wait", "run", "wait", ["obs"], "wait", "run", "wait"]
    sample_events.clear()
    with pytest.raises(ValueError, match="^obs contains NaN or Inf"):
        policy.sample(torch.full((3, 2, 4), float("nan")), noise=torch.full((3, 8, 2), float("nan")))
    assert sample_events == [["obs", "noise"], "wait"]


def test_the_models_device_and_dtype_come_from_the_parameter_parameters_yields_first():
    from dp_fast.policy import _first_parameter

    nets = [
        ConditionalUnet1D(2, global_cond_dim=4, diffusion_step_embed_dim=16, down_dims=(16, 16)),
        LessonUNet1D(3, 5, 24, 100),
        torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(2, 3)), torch.nn.Linear(3, 4)),
    ]
    shared = torch.nn.Linear(2, 2)
    nets.append(torch.nn.Sequential(torch.nn.Sequential(torch.nn.ReLU()), shared, torch.nn.Sequential(shared)))
    holes = torch.nn.Module()  # a None submodule and a None parameter before the first real one
    holes.register_module("gone", None)
    holes.register_parameter("unset", None)
    holes.inner = torch.nn.Module()
    holes.inner.register_parameter("unset", None)
    holes.inner.conv = torch.nn.Conv1d(2, 2, 3).double()
    holes.after = torch.nn.Linear(2, 2)
    own = torch.nn.Linear(2, 2)  # a module's own parameters before its children's
    own.child = torch.nn.Linear(3, 3).half()
    nets += [holes, own]
    for net in nets:
        assert _first_parameter(net) is next(net.parameters())
    assert _first_parameter(holes).dtype == torch.float64 and _first_parameter(own).dtype == torch.float32
    with pytest.raises(ValueError, match="has no parameters"):
        _first_parameter(torch.nn.Sequential(torch.nn.ReLU()))
    policy = DiffusionPolicy(2, 4, chunk_size=8, hidden=16)
    policy.model.double()  # parameters converted in place: the same objects, new data
    assert policy.dtype == torch.float64 and policy.device == torch.device("cpu")


def test_the_policys_device_and_dtype_follow_every_way_its_first_parameter_changes():
    """DiffusionPolicy keeps where its model's first parameter is (module and name) between calls:
    every change that puts another parameter there, or another model in the policy, is seen."""
    policy = DiffusionPolicy(2, 4, chunk_size=8, hidden=16)
    first = lambda: next(policy.model.parameters())  # noqa: E731
    assert policy.dtype == torch.float32 and policy._parameter() is first()
    policy.model.half()  # in place: the same parameter objects
    assert policy.dtype == torch.float16
    swap = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        old = first()
        policy.model.double()  # new Parameter objects written into the modules' tables, no registration
        assert first() is not old and policy._parameter() is first() and policy.dtype == torch.float64
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(swap)
    module = next(m for m in policy.model.modules() if m._parameters)
    name = next(iter(module._parameters))
    setattr(module, name, torch.nn.Parameter(torch.zeros(module._parameters[name].shape, dtype=torch.bfloat16)))  # registered
    assert policy.dtype == torch.bfloat16 and policy._parameter() is first()
    module._parameters[name] = None  # emptied by hand: the next parameter is the first now
    assert policy._parameter() is first() and policy.dtype == torch.float64
    policy.model = LessonUNet1D(2, 4, 16, 100).half()  # another model
    assert policy.dtype == torch.float16 and policy._parameter() is first()


def test_warmup_is_one_sample_that_draws_nothing_from_the_global_rng(sample_events):
    policy = _chi_policy(_ddpm())  # DDPM draws step noise: from the warm-up's own generator
    state = torch.get_rng_state()
    seconds = policy.warmup(batch_size=3, n_steps=4)
    assert seconds >= 0 and torch.equal(torch.get_rng_state(), state)
    assert sample_events == [["obs", "noise"], "wait", "run", "wait"]
    for bad in (0, -1, 2.0, True, "1"):
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            policy.warmup(batch_size=bad)
    with pytest.raises(ValueError, match="backend must be"):
        policy.warmup(backend="tpu")


def test_bad_noise_actions_and_backend_raise(policy):
    obs = torch.randn(3, 2, 4)
    with pytest.raises(ValueError, match=r"noise must be shaped .* \(3, 8, 2\)"):
        policy.sample(obs, noise=torch.randn(3, 8, 3))
    with pytest.raises(ValueError, match="^noise contains NaN or Inf"):
        policy.sample(obs, noise=torch.full((3, 8, 2), float("nan")))
    with pytest.raises(ValueError, match="^actions contains NaN or Inf"):
        policy.train_step(obs, torch.full((3, 8, 2), float("inf")), torch.optim.SGD(policy.model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match=r"actions must be shaped"):
        policy.train_step(obs, torch.randn(3, 7, 2), torch.optim.SGD(policy.model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="backend must be"):
        policy.sample(obs, backend="tpu")
    for name in ("triton", "cuda"):
        if name not in dp_fast.available_backends():
            with pytest.raises(NotImplementedError, match="not available in this installation"):
                policy.sample(obs, backend=name)
    if "cuda" in dp_fast.available_backends():  # built with the CUDA kernels, but these tensors are on the CPU
        with pytest.raises(NotImplementedError, match="runs on a CUDA GPU"):
            policy.sample(obs, backend="cuda")
    with pytest.raises(ValueError, match="n_steps"):
        policy.sample(obs, n_steps=1)
    # n_steps 2.5 ran 2 steps, True 1 and "4" 4; a wrong generator failed on its missing .device
    for n_steps, match in [(2.5, "n_steps must be an int, got float 2.5"), (True, "n_steps must be an int, got a bool"),
                           ("4", "n_steps must be an int, got str '4'")]:
        with pytest.raises(TypeError, match=match):
            policy.sample(obs, n_steps=n_steps)
    assert policy.sample(obs, n_steps=np.int64(3), noise=torch.zeros(3, 8, 2)).equal(policy.sample(obs, n_steps=3, noise=torch.zeros(3, 8, 2)))
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        policy.sample(obs, generator=0)


def test_inconsistent_configurations_raise():
    with pytest.raises(ValueError, match="chunk_size must be divisible by 2"):
        DiffusionPolicy(2, 4, chunk_size=7, hidden=16)
    with pytest.raises(ValueError, match="chunk_size must be divisible by 4"):
        DiffusionPolicy.from_model(ConditionalUnet1D(2, global_cond_dim=4, diffusion_step_embed_dim=16, down_dims=(16, 16, 16)), _ddpm(), chunk_size=6)
    with pytest.raises(ValueError, match="does not fit"):
        DiffusionPolicy(2, 4, model=LessonUNet1D(3, 4, 16))
    with pytest.raises(ValueError, match="num_train_timesteps"):
        DiffusionPolicy(2, 4, model=ConditionalUnet1D(2, global_cond_dim=4, down_dims=(16, 32)), scheduler=DDIMScheduler())
    with pytest.raises(ValueError, match="eta applies to DDIMScheduler"):
        DiffusionPolicy(2, 4, hidden=16, eta=0.5)
    with pytest.raises(TypeError, match=r"LessonUNet1D or ConditionalUnet1D, got Linear$"):
        DiffusionPolicy.from_model(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="needs the scheduler"):
        DiffusionPolicy.from_model(ConditionalUnet1D(2, global_cond_dim=4, down_dims=(16, 32)))
    with pytest.raises(ValueError, match="divisible by n_obs_steps"):
        DiffusionPolicy.from_model(ConditionalUnet1D(2, global_cond_dim=5, down_dims=(16, 32)), _ddpm(), n_obs_steps=2)



@pytest.mark.parametrize("name, value, error", [
    ("chunk_size", 6, "chunk_size must be divisible by 4 for this network, got 6"),
    ("chunk_size", 0, "chunk_size must be an int >= 1, got 0"),
    ("chunk_size", 8.0, "chunk_size must be an int >= 1, got 8.0"),
    ("action_dim", 3, r"does not fit this policy: policy expects \{'action_dim': 3"),
    ("obs_dim", 5, "does not fit this policy"),
    ("n_obs_steps", 2, r"'global_cond_dim': 8\}, network has"),
    ("n_steps", 50, "n_steps=50 must equal scheduler.num_train_timesteps=100"),
    ("eta", 0.5, "eta applies to DDIMScheduler only"),
    ("eta", float("nan"), "eta must be a finite float >= 0"),
    ("scheduler", DDIMScheduler(num_train_timesteps=20), "num_train_timesteps=20"),
    ("model", LessonUNet1D(3, 4, 16, 100), r"network has \{'action_dim': 3"),
])
def test_a_setting_changed_after_construction_is_checked_before_the_next_call(name, value, error):
    """Each setting the constructor checks is checked again, by the same rules, before the next
    sample() or train_step(): set later, a chunk size the network cannot take failed inside a
    kernel (or, zero, returned an empty chunk from the Triton backend), an eta under DDPM failed
    in its step and another observation width in a matrix product. Not at the moment it is set:
    a new network and its action_dim are set one after the other."""
    model = ConditionalUnet1D(2, global_cond_dim=4, diffusion_step_embed_dim=16, down_dims=(8, 16, 16), n_groups=4)
    policy = DiffusionPolicy.from_model(model, _ddpm(), chunk_size=8)
    obs = torch.randn(3, 4)
    policy.sample(obs, 3)
    setattr(policy, name, value)  # accepted for now
    obs = torch.randn(3, policy.n_obs_steps, policy.obs_dim) if policy.n_obs_steps > 1 else torch.randn(3, policy.obs_dim)
    with pytest.raises(ValueError, match=error):
        policy.sample(obs, 3)
    with pytest.raises(ValueError, match=error):
        policy.train_step(obs, torch.randn(3, 8, 2), torch.optim.SGD(policy.model.parameters(), lr=0.1))


def test_a_new_network_and_its_sizes_set_one_after_the_other():
    policy = DiffusionPolicy(2, 4, chunk_size=8, hidden=16)
    policy.sample(torch.randn(1, 4), 3)
    policy.model = LessonUNet1D(3, 10, 16, 100)  # action 3, observations 5 x 2
    policy.action_dim, policy.obs_dim, policy.n_obs_steps, policy.chunk_size = 3, 5, 2, np.int64(4)  # a NumPy int too
    assert policy.sample(torch.randn(2, 2, 5), 3).shape == (2, 4, 3)


def test_the_schedulers_step_count_set_on_it_is_checked_on_every_call():
    """A step count set on the scheduler itself, not on the policy: the lesson's network has a
    table of 100 steps, and step 999 fell outside it (IndexError on the CPU, a device-side
    assert on a GPU, which ends the process's use of CUDA). Refused before any work."""
    policy = DiffusionPolicy(2, 4, chunk_size=8, hidden=16)
    policy.sample(torch.randn(1, 4), 3)
    policy.scheduler.num_train_timesteps = 1000
    with pytest.raises(ValueError, match="n_steps=100 must equal scheduler.num_train_timesteps=1000"):
        policy.sample(torch.randn(1, 4), 3)
    with pytest.raises(ValueError, match="n_steps=100 must equal scheduler.num_train_timesteps=1000"):
        policy.train_step(torch.randn(3, 4), torch.randn(3, 8, 2), torch.optim.SGD(policy.model.parameters(), lr=0.1))
    policy.scheduler.num_train_timesteps = 100
    assert policy.sample(torch.randn(1, 4), 3).shape == (1, 8, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sample_on_gpu_matches_cpu_and_rejects_mixed_devices():
    torch.manual_seed(0)
    policy = _chi_policy(_ddpm())
    obs, noise = torch.randn(3, 2, 3), torch.randn(3, 8, 2)
    cpu = policy.sample(obs, 10, noise=noise, generator=torch.Generator().manual_seed(1))
    policy.to("cuda")
    with pytest.raises(ValueError, match="policy.to"):
        policy.sample(obs)
    gpu = policy.sample(obs.cuda(), 10, noise=noise.cuda(), generator=torch.Generator().manual_seed(1))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)


def test_a_wrapped_network_is_refused_with_the_attribute_that_holds_it():
    """torch.compile's module and AveragedModel (an EMA) wrap the network: the error says where
    it is, so the caller passes that (the fast backends compute the network itself)."""
    net = LessonUNet1D(2, 4, 16)
    with pytest.raises(TypeError, match=r"got OptimizedModule; pass the network it wraps \(model._orig_mod\)"):
        DiffusionPolicy(2, 4, model=torch.compile(net))
    policy = DiffusionPolicy(2, 4, model=net)
    policy.model = torch.optim.swa_utils.AveragedModel(net)
    with pytest.raises(TypeError, match=r"got AveragedModel; pass the network it wraps \(model.module\)"):
        policy.sample(torch.randn(1, 4), 2)
    policy.model = policy.model.module
    assert policy.sample(torch.randn(1, 4), 2).shape == (1, 16, 2)
