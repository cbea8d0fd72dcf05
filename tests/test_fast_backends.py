"""The fast backends (backend="triton" and backend="cuda"): network evaluations and whole
sample() against the reference, the capture cache (new batch sizes, weight updates, two
policies), precisions and refusals.

Without a GPU the Triton backend runs in Triton's interpreter on tiny networks, the CUDA
backend's tests skip except one network evaluation through the CUDA kernel compiled for the
CPU (tests/emulation/); the `gpu` tests run the workloads' real networks."""

import pytest
import torch

pytest.importorskip("triton")

import importlib  # noqa: E402

from dp_fast import DiffusionPolicy, _ext, _sampler  # noqa: E402
from dp_fast._fastpath import sampler_for  # noqa: E402
from dp_fast.models import ConditionalUnet1D  # noqa: E402
from dp_fast.schedulers import DDIMScheduler, DDPMScheduler  # noqa: E402
from dp_fast.triton import INTERPRETED  # noqa: E402
from emulation import load as emulation  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = [
    pytest.param("triton", marks=pytest.mark.skipif(DEVICE == "cpu" and not INTERPRETED, reason="needs a GPU or TRITON_INTERPRET=1")),
    pytest.param("cuda", marks=pytest.mark.skipif(DEVICE == "cpu" or not _ext.cuda_compiled(), reason="needs a GPU and the CUDA kernels")),
]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def _conv_block(backend):
    return importlib.import_module(f"dp_fast.{backend}").conv_block


def _sampler_of(policy, backend):
    return sampler_for(policy, backend, _conv_block(backend))
SCHED = dict(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True)


def _randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / max(p[0].numel(), 1) ** 0.5 + 0.05)
    return model


def _chi(scheduler, *, down_dims=(16, 24), k=5, groups=4, film=True, obs_dim=3, n_obs=2, horizon=8, seed=0, **kw):
    net = _randomize(ConditionalUnet1D(2, global_cond_dim=obs_dim * n_obs, diffusion_step_embed_dim=16, down_dims=down_dims, kernel_size=k, n_groups=groups, cond_predict_scale=film), seed)
    return DiffusionPolicy.from_model(net.to(DEVICE), scheduler, chunk_size=horizon, n_obs_steps=n_obs, **kw)


def _lesson(seed=0, **kw):
    torch.manual_seed(seed)  # PyTorch's own initialisation: the lesson's network has no normalisation
    return DiffusionPolicy(3, 5, chunk_size=8, hidden=24, **kw).to(DEVICE)


def _obs(policy, batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, policy.obs_dim) if policy.n_obs_steps == 1 else (batch, policy.n_obs_steps, policy.obs_dim)
    return torch.randn(shape, generator=g).to(DEVICE, policy.dtype)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


NETWORKS = {
    "lesson": lambda **kw: _lesson(**kw),
    "chi-film-k5": lambda **kw: _chi(DDPMScheduler(**SCHED), **kw),
    "chi-add-k3-3lvl": lambda **kw: _chi(DDPMScheduler(**SCHED), down_dims=(8, 16, 24), k=3, groups=8, film=False, horizon=8, **kw),
}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_network_evaluation_matches_reference(name, backend):
    """Per evaluation: float64 to 1e-10, float32 to SPEC.md's 1e-5 relative."""
    for dtype, bound, t in ((torch.float64, 1e-10, 37), (torch.float32, 1e-5, 99)):
        policy = NETWORKS[name]()
        policy.model.to(dtype)
        obs = policy._condition(_obs(policy, 2))
        x = torch.randn(2, policy.chunk_size, policy.action_dim, dtype=dtype, device=DEVICE)
        fast = _sampler_of(policy, backend)
        expected = policy.denoise(x, torch.full((2,), t, device=DEVICE), obs)
        assert _rel(fast.denoise(x, t, obs), expected) < bound, dtype


@emulation.skip_unless_available()
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", list(NETWORKS))
def test_network_evaluation_with_the_cuda_kernel_emulated_on_the_cpu(name, batch, monkeypatch):
    """kernels/conv_block.cu compiled for the CPU (tests/emulation/) behind the CUDA backend's own
    plan and packing: every block of each network in float64, batch 1 (GEMV tiles at T <= 8)
    and 2."""
    op = emulation.conv_block()
    monkeypatch.setattr(importlib.import_module("dp_fast.cuda.conv_block"), "_operator", lambda device: op)
    policy = NETWORKS[name]()
    policy.model.to(torch.float64)
    obs = policy._condition(_obs(policy, batch))
    x = torch.randn(batch, policy.chunk_size, policy.action_dim, dtype=torch.float64)
    fast = _sampler_of(policy, "cuda")
    expected = policy.denoise(x, torch.full((batch,), 37), obs)
    assert _rel(fast.denoise(x, 37, obs), expected) < 1e-10


@pytest.mark.parametrize(
    "make,n_steps",
    [
        (lambda: _lesson(), 5),
        (lambda: _chi(DDPMScheduler(**SCHED)), 4),
        (lambda: _chi(DDIMScheduler(**SCHED)), 3),
        (lambda: _chi(DDIMScheduler(**SCHED, prediction_type="sample"), eta=0.7, n_obs=1), 3),
    ],
    ids=["lesson-ddim", "chi-ddpm", "chi-ddim", "chi-ddim-eta-sample"],
)
def test_sample_matches_reference_on_the_same_noise(make, n_steps, backend):
    policy = make()
    obs = _obs(policy, 3)
    noise = torch.randn(3, policy.chunk_size, policy.action_dim, device=DEVICE)
    ref = policy.sample(obs, n_steps, noise=noise, generator=torch.Generator().manual_seed(5), backend="reference")
    fast = policy.sample(obs, n_steps, noise=noise, generator=torch.Generator().manual_seed(5), backend=backend)
    assert fast.shape == ref.shape and fast.device == ref.device
    assert (fast - ref).abs().max().item() < 1e-4


def test_capture_cache_new_batch_size_and_repeat_calls(backend):
    policy = _chi(DDIMScheduler(**SCHED))
    for batch in (1, 3, 1):
        obs = _obs(policy, batch, seed=batch)
        noise = torch.randn(batch, 8, 2, device=DEVICE)
        ref = policy.sample(obs, 3, noise=noise, backend="reference")
        assert (policy.sample(obs, 3, noise=noise, backend=backend) - ref).abs().max().item() < 1e-4
    assert len(_sampler_of(policy, backend)._captures) == 2


def test_weight_update_is_never_replayed_stale(backend):
    policy = _lesson()
    obs, noise = _obs(policy, 2), torch.randn(2, 8, 3, device=DEVICE)
    before = policy.sample(obs, 4, noise=noise, backend=backend)
    opt = torch.optim.SGD(policy.model.parameters(), lr=0.5)
    policy.train_step(obs, torch.randn(2, 8, 3, device=DEVICE), opt)
    after = policy.sample(obs, 4, noise=noise, backend=backend)
    ref = policy.sample(obs, 4, noise=noise, backend="reference")
    assert (after - before).abs().max().item() > 1e-3
    assert (after - ref).abs().max().item() < 1e-4
    policy.model.load_state_dict(_lesson(seed=9).model.state_dict())
    ref = policy.sample(obs, 4, noise=noise, backend="reference")
    assert (policy.sample(obs, 4, noise=noise, backend=backend) - ref).abs().max().item() < 1e-4


def test_two_policies_side_by_side_keep_their_own_weights(backend):
    a, b = _lesson(seed=1), _lesson(seed=2)
    obs, noise = _obs(a, 2), torch.randn(2, 8, 3, device=DEVICE)
    for _ in range(2):
        for policy in (a, b):
            ref = policy.sample(obs, 3, noise=noise, backend="reference")
            assert (policy.sample(obs, 3, noise=noise, backend=backend) - ref).abs().max().item() < 1e-4


def test_bf16_evaluation_is_within_bound(backend):
    policy = NETWORKS["chi-film-k5"](precision="bf16")
    obs = policy._condition(_obs(policy, 2))
    x = torch.randn(2, 8, 2, device=DEVICE)
    fast = _sampler_of(policy, backend)
    assert fast.dtype == torch.bfloat16
    expected = policy.denoise(x, torch.full((2,), 50, device=DEVICE), obs)
    assert _rel(fast.denoise(x, 50, obs), expected) < 2e-2


def test_auto_on_the_cpu_is_the_reference_and_local_cond_is_refused(backend):
    cpu_policy = _lesson().to("cpu")
    assert _sampler.resolve_backend("auto", cpu_policy, torch.device("cpu")) is _sampler.reference_loop
    net = ConditionalUnet1D(2, local_cond_dim=2, global_cond_dim=3, diffusion_step_embed_dim=16, down_dims=(8, 16))
    policy = DiffusionPolicy.from_model(net.to(DEVICE), DDPMScheduler(**SCHED), chunk_size=8)
    with pytest.raises(NotImplementedError, match="local condition"):
        policy.sample(_obs(policy, 1), 2, backend=backend)


# -- the GPU: real workloads, one CUDA graph ------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("batch", [1, 64])
def test_pusht_network_on_gpu_matches_reference_in_one_graph(batch, backend):
    torch.manual_seed(0)
    net = ConditionalUnet1D(2, global_cond_dim=40, diffusion_step_embed_dim=256, down_dims=(256, 512, 1024), kernel_size=5, cond_predict_scale=True)
    policy = DiffusionPolicy.from_model(net.cuda(), DDIMScheduler(**SCHED), chunk_size=16, n_obs_steps=2)
    obs = torch.randn(batch, 2, 20, device="cuda")
    noise = torch.randn(batch, 16, 2, device="cuda")
    ref = policy.sample(obs, 16, noise=noise, backend="reference")
    fast = policy.sample(obs, 16, noise=noise, backend=backend)
    assert (fast - ref).abs().max().item() < 1e-4
    sampler = _sampler_of(policy, backend)
    assert all(cap.graph is not None for cap in sampler._captures.values())
    cond = policy._condition(obs)
    x = torch.randn(batch, 16, 2, device="cuda")
    assert _rel(sampler.denoise(x, 50, cond), policy.denoise(x, torch.full((batch,), 50, device="cuda"), cond)) < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision,bound", [("bf16", 2e-2), ("tf32", 5e-3)])
def test_pusht_network_on_gpu_reduced_precision(precision, bound, backend):
    torch.manual_seed(0)
    net = ConditionalUnet1D(2, global_cond_dim=40, diffusion_step_embed_dim=256, down_dims=(256, 512, 1024), kernel_size=5, cond_predict_scale=True)
    policy = DiffusionPolicy.from_model(net.cuda(), DDIMScheduler(**SCHED), chunk_size=16, n_obs_steps=2, precision=precision)
    cond = policy._condition(torch.randn(3, 2, 20, device="cuda"))
    x = torch.randn(3, 16, 2, device="cuda")
    expected = policy.denoise(x, torch.full((3,), 30, device="cuda"), cond)
    assert _rel(_sampler_of(policy, backend).denoise(x, 30, cond), expected) < bound


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not _ext.cuda_compiled(), reason="needs a GPU and the CUDA kernels")
def test_cuda_conv_block_op_traces_under_torch_compile():
    from dp_fast.cuda import conv_block

    x = torch.randn(2, 8, 16, device="cuda")
    w, b = torch.randn(12, 8, 3, device="cuda"), torch.randn(12, device="cuda")
    fn = torch.compile(lambda x: conv_block(x, w, b, act="silu") * 2, fullgraph=True)
    expected = torch.nn.functional.silu(torch.nn.functional.conv1d(x, w, b, padding=1)) * 2
    assert _rel(fn(x), expected) < 1e-5
