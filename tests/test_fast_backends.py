"""The fast backends (backend="triton" and backend="cuda"): network evaluations and whole
sample() against the reference, the capture cache (new batch sizes, weight updates, two
policies), precisions and refusals.

Without a GPU the Triton backend runs in Triton's interpreter on tiny networks, the CUDA
backend's tests skip except one network evaluation through the CUDA kernel compiled for the
CPU (tests/emulation/); the `gpu` tests run the workloads' real networks."""

import pytest
import torch

pytest.importorskip("triton")

import contextlib  # noqa: E402
import importlib  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

from dp_fast import DiffusionPolicy, _ext, _sampler  # noqa: E402
from dp_fast._fastpath import FastSampler, sampler_for  # noqa: E402
from dp_fast.ops.conv_block import GroupNormArgs, StepArgs, arrival_counters, conv_block_ref, out_length  # noqa: E402
from dp_fast.models import ConditionalUnet1D  # noqa: E402
from dp_fast.schedulers import DDIMScheduler, DDPMScheduler  # noqa: E402
from dp_fast.triton import INTERPRETED  # noqa: E402
from diag_scripts import load as load_diag  # noqa: E402
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


@pytest.mark.parametrize("name", ["triton", "cuda"])
def test_chis_output_conv_joins_the_last_block_where_the_backend_fuses_a_head(name):
    """Chi's final_conv (a Conv1dBlock, then Conv1d(C, A, 1)) and the step are one launch on both
    backends (their conv_block's ``head_channels``), the earlier blocks the same as without; an
    action wider than the backend's head keeps two launches. (Builds the program only: no GPU.)"""
    from dp_fast._fastpath import build_program
    from dp_fast.ops.conv_block import HEAD_MAX_CHANNELS

    policy = NETWORKS["chi-film-k5"]()
    assert _conv_block(name).head_channels == HEAD_MAX_CHANNELS
    fused = _sampler_of(policy, name).program.blocks
    plain = build_program(policy.model, torch.float32).blocks
    assert len(fused) == len(plain) - 1 and fused[-1].step and fused[-1].head is not None and plain[-1].head is None
    assert fused[-1].weight.data_ptr() == plain[-2].weight.data_ptr() and fused[-1].gn.groups == 8  # Chi's quirk: 8 groups here
    assert fused[-1].head.weight.shape == (2, 16) and fused[-1].head.weight.data_ptr() == plain[-1].weight.data_ptr()
    assert all(torch.equal(f.weight, p.weight) and f.mode == p.mode and f.head is None for f, p in zip(fused[:-1], plain[:-2]))
    wide = _randomize(ConditionalUnet1D(HEAD_MAX_CHANNELS + 1, global_cond_dim=3, diffusion_step_embed_dim=16, down_dims=(16, 24), n_groups=4), 0)
    assert build_program(wide, torch.float32, head_channels=HEAD_MAX_CHANNELS).blocks[-1].head is None


def _as_wide_as_its_input(seed=0):
    """A Chi network whose down_dims shrink, so that its up level's first residual block takes
    cat(x, skip) of as many channels as it puts out: its residual_conv is an Identity, which
    adds cat(x, skip) as it is."""
    return _chi(DDIMScheduler(**SCHED), down_dims=(16, 8), groups=4, seed=seed)


def test_an_up_block_as_wide_as_its_input_adds_its_input_as_it_is(backend):
    policy = _as_wide_as_its_input()
    assert isinstance(policy.model.up_modules[0][0].residual_conv, torch.nn.Identity)
    policy.model.to(torch.float64)
    obs = policy._condition(_obs(policy, 2))
    x = torch.randn(2, policy.chunk_size, policy.action_dim, dtype=torch.float64, device=DEVICE)
    expected = policy.denoise(x, torch.full((2,), 37, device=DEVICE), obs)
    assert _rel(_sampler_of(policy, backend).denoise(x, 37, obs), expected) < 1e-10


@emulation.skip_unless_available()
def test_an_up_block_as_wide_as_its_input_with_the_cuda_kernel_emulated_on_the_cpu(monkeypatch):
    op = emulation.conv_block()
    monkeypatch.setattr(importlib.import_module("dp_fast.cuda.conv_block"), "_operator", lambda device: op)
    policy = _as_wide_as_its_input()
    policy.model.to(torch.float64)
    obs = policy._condition(_obs(policy, 1))
    x = torch.randn(1, policy.chunk_size, policy.action_dim, dtype=torch.float64)
    expected = policy.denoise(x, torch.full((1,), 37), obs)
    assert _rel(_sampler_of(policy, "cuda").denoise(x, 37, obs), expected) < 1e-10


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


def _emulated_cuda_ops(monkeypatch, launches: list):
    """The CUDA backend's operators replaced by the kernel's CPU emulation (tests/emulation/);
    every chain launch is appended to `launches`."""
    module = importlib.import_module("dp_fast.cuda.conv_block")
    chain = emulation.conv_block_chain()
    ops = {"conv_block": emulation.conv_block(), "conv_block_params": emulation.conv_block_params(),
           "conv_block_chain": lambda *args: (launches.append(args), chain(*args))}
    monkeypatch.setattr(module, "_operator", lambda device, name="conv_block": ops[name])
    return module


@pytest.mark.skipif(not _ext.cuda_compiled(), reason="needs the CUDA build of the extension")
def test_cuda_backend_chain_and_flags_are_opt_in():
    """A launch per block and, in the chain, grid barriers unless DP_FAST_CUDA_CHAIN=1 and
    DP_FAST_CUDA_CHAIN_FLAGS=1 say otherwise (both were slower on the H200's last run)."""
    code = "import importlib; m = importlib.import_module('dp_fast.cuda.conv_block'); print(m.CHAIN, m.CHAIN_FLAGS)"
    for value, expected in (("", "False False"), ("0", "False False"), ("1", "True True")):
        env = {k: v for k, v in os.environ.items() if not k.startswith("DP_FAST_CUDA_CHAIN")}
        if value:
            env.update(DP_FAST_CUDA_CHAIN=value, DP_FAST_CUDA_CHAIN_FLAGS=value)
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[-2:] == expected.split()


@emulation.skip_unless_available()
@pytest.mark.parametrize("flags", [True, False], ids=["flags", "no-flags"])
@pytest.mark.parametrize("name,batch", [("lesson", 1), ("chi-film-k5", 2)])
def test_sample_through_the_cuda_chain_kernel_emulated_on_the_cpu(name, batch, flags, monkeypatch):
    """The chain's path: every step's network evaluation recorded once, as the chain
    kernel's parameters on the sampler's static buffers, and run by the chain kernel
    (kernels/conv_block.cu; in the emulation a grid of one CTA, which takes every tile): the whole
    sample() in float64 equals the reference's, with one launch for the whole loop, and again after
    a weight update (re-packed in place, so the recorded addresses stay valid). With the flagged
    exchange (flags) its staged entries read what earlier staged entries wrote from their flagged
    slots (a value read before its write, or with another launch's flag, fails the launch)."""
    launches = []
    module = _emulated_cuda_ops(monkeypatch, launches)
    monkeypatch.setattr(module, "STAGED", True)  # staged entries (opt-in: DP_FAST_CUDA_STAGED=1)
    monkeypatch.setattr(module, "CHAIN_FLAGS", flags)
    policy = NETWORKS[name]()
    policy.model.to(torch.float64)
    obs = _obs(policy, batch)
    noise = torch.randn(batch, policy.chunk_size, policy.action_dim, dtype=torch.float64)
    sampler = sampler_for(policy, "cuda", module.conv_block, module.ChainRecorder)
    per_block = sampler_for(policy, "cuda", module.conv_block)
    for update in range(2):
        ref = policy.sample(obs, 3, noise=noise, generator=torch.Generator().manual_seed(5), backend="reference")
        blocks = per_block.run(policy._condition(obs), noise.clone(), 3, torch.Generator().manual_seed(5))
        launches.clear()
        got = sampler.run(policy._condition(obs), noise.clone(), 3, torch.Generator().manual_seed(5))
        (cap,) = sampler._captures.values()
        assert cap.chains is not None and len(launches) == 1  # the whole loop
        # the steps' entries of a block share its split partials (and Chi's last block its head's
        # shares): at most one buffer per such entry of one evaluation (none when every block is
        # staged: the lesson's)
        (chain,) = cap.chains
        split = [c for c in chain.configs if c[6] * c[8] > 1]  # tpg x split > 1
        heads = 0 if name == "lesson" else 1
        if name == "lesson":
            assert len(chain.configs) == 8 * len(cap.draws)
        scratch = len(split) // len(cap.draws) + heads
        assert 0 < len(chain.partials) <= scratch if scratch else not chain.partials
        # the same kernels' arithmetic as block by block; the fast path's sampler differs from the
        # reference loop's by ~1e-8 in float64 (its step coefficients), chain or not
        assert _rel(got, blocks) < 1e-13 and _rel(got, ref) < 1e-6, update
        assert (chain.flags is not None) == flags
        # no grid barrier where every entry is staged and linked: the lesson's U-Net with flags
        assert emulation.last_chain_barrier_free() == (flags and name == "lesson")
        if flags:
            # every launch counted (the first word's low half), and every staged entry's slot
            # written by the last one: its words' flag (the high half) is that launch's number
            assert int(chain.flags[0]) & 0xFFFFFFFF == update + 1
            slot_words = (len(chain.flags) - 1) // len(chain.configs)
            for i, config in enumerate(chain.configs):
                assert config[19] == (i + 1 if config[15] else 0)
                if config[15]:  # float64: two words a value
                    words = chain.flags[1 + i * slot_words:][: 2 * chain.scratch[i].numel()]
                    assert ((words >> 32) == update + 1).all(), i
        if name == "lesson" and flags:
            # the U-Net's links: each entry reads the one before (the first evaluation's first
            # entry the sample itself, every later one the step's slot), the two upsampling
            # entries (5 and 6 of each evaluation) their skips from entries 1 and 3
            for i, config in enumerate(chain.configs):
                e = i % 8
                assert config[17] == (i if i > 0 else 0), i
                assert config[18] == {5: i - 1, 6: i - 4}.get(e, 0), i
        with torch.no_grad():
            for p in policy.model.parameters():
                p.mul_(1.05)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE == "cpu" or not _ext.cuda_compiled(), reason="needs a GPU and the CUDA kernels")
@pytest.mark.parametrize("flags", [True, False], ids=["flags", "no-flags"])
@pytest.mark.parametrize("name,batch", [("lesson", 1), ("lesson-w1", 1), ("chi-film-k5", 1), ("chi-add-k3-3lvl", 3)])
def test_cuda_chain_sample_matches_a_launch_per_block_on_the_gpu(name, batch, flags, monkeypatch):
    """The chain kernel on the GPU (one cooperative launch for the whole loop, in the sampler's
    CUDA graph; grid-wide barriers between the blocks, or for the lesson's U-Net with the flagged
    exchange none, its CTAs polling each other's outputs: 64 of them at W1's size) against the
    same sampler launching block by block, twice (a graph replay) and after a weight update."""
    module = importlib.import_module("dp_fast.cuda.conv_block")
    monkeypatch.setattr(module, "CHAIN_FLAGS", flags)
    policy = DiffusionPolicy(7, 20, chunk_size=16, hidden=256).to(DEVICE) if name == "lesson-w1" else NETWORKS[name]()
    obs = _obs(policy, batch)
    noise = torch.randn(batch, policy.chunk_size, policy.action_dim, device=DEVICE)
    chain = sampler_for(policy, "cuda", module.conv_block, module.ChainRecorder)
    blocks = sampler_for(policy, "cuda", module.conv_block)
    for update in range(3):
        got = chain.run(policy._condition(obs), noise.clone(), 4, torch.Generator().manual_seed(5))
        want = blocks.run(policy._condition(obs), noise.clone(), 4, torch.Generator().manual_seed(5))
        (cap,) = chain._captures.values()
        assert cap.chains is not None and cap.graph is not None
        if name.startswith("lesson"):
            assert (cap.chains[0].flags is not None) == flags
        assert _rel(got, want) < 1e-5, update
        if update == 1:
            with torch.no_grad():
                for p in policy.model.parameters():
                    p.mul_(1.05)


@emulation.skip_unless_available()
def test_cuda_chain_falls_back_to_a_launch_per_block_beyond_16_steps(monkeypatch):
    """A horizon whose plans are wider than the chain kernel takes (T > 16): the sampler records
    no chain and launches block by block, with the same result."""
    launches = []
    module = _emulated_cuda_ops(monkeypatch, launches)
    policy = _chi(DDIMScheduler(**SCHED), horizon=32)
    policy.model.to(torch.float64)
    obs = _obs(policy, 1)
    noise = torch.randn(1, policy.chunk_size, policy.action_dim, dtype=torch.float64)
    sampler = sampler_for(policy, "cuda", module.conv_block, module.ChainRecorder)
    ref = policy.sample(obs, 2, noise=noise, backend="reference")
    got = sampler.run(policy._condition(obs), noise.clone(), 2, None)
    (cap,) = sampler._captures.values()
    assert cap.chains is None and not launches
    assert _rel(got, ref) < 1e-6


@emulation.skip_unless_available()
@pytest.mark.parametrize("grid", [1, 3, 7, 64])
@pytest.mark.parametrize("t,batch,gn", [(4, 1, 2), (8, 1, None), (16, 2, 2)], ids=["gemv4", "gemv8", "tiled16"])
def test_cuda_chain_kernel_spreads_a_block_over_any_grid(grid, t, batch, gn, monkeypatch):
    """One block through the chain kernel on `grid` CTAs (the emulation runs a one-block chain,
    which has no grid barrier, on the grid it is given): every tile is taken by exactly one CTA
    (tiles i, i + grid, ...), split partials and all, as the block's own launch computes it, and
    the arrival counters are left at zero. Tiled entries only (staged ones: the next test)."""
    module = importlib.import_module("dp_fast.cuda.conv_block")
    monkeypatch.setattr(module, "TARGET_PROGRAMS_PER_SM", 1000)  # many tiles and splits
    monkeypatch.setattr(module, "MIN_CHUNKS_PER_SPLIT", 1)
    monkeypatch.setattr(module, "STAGED", False)
    monkeypatch.setattr(module, "_operator", lambda device, name="conv_block": getattr(emulation, name)())
    g = torch.Generator().manual_seed(t + grid)
    x = torch.randn(batch, 200, t, generator=g, dtype=torch.float64)  # C_in * K = 600: split in 3 (GEMV) or 10 chunks
    w, b = torch.randn(24, 200, 3, generator=g, dtype=torch.float64) / 25, torch.randn(24, generator=g, dtype=torch.float64)
    norm = GroupNormArgs(gn, torch.randn(24, generator=g, dtype=torch.float64), torch.randn(24, generator=g, dtype=torch.float64)) if gn else None
    out = torch.full((batch, 24, t), float("nan"), dtype=torch.float64)
    recorder = module.ChainRecorder(torch.device("cpu"))
    recorder.conv_block(x, w, b, gn=norm, act="mish", out=out)
    chain = recorder.finish()
    chain.grid = grid
    chain.launch()
    torch.testing.assert_close(out, conv_block_ref(x, w, b, gn=norm, act="mish"), rtol=1e-10, atol=1e-10)
    # each region's last arrival reset its counter: no tile arrived twice
    assert not arrival_counters(torch.device("cpu"), 1).any()


STAGED_CASES = {  # mode, C1, C2 (the skip), C_out, K, T_in, batch, act, cond, residual, step
    "same-k3-t16": ("same", 37, 0, 19, 3, 16, 1, "silu", "add", False, False),
    "same-k5-skip-film-res": ("same", 24, 13, 40, 5, 13, 1, "mish", "film", True, False),
    "down-t15": ("down", 29, 0, 33, 3, 15, 1, "silu", None, False, False),
    "up-skip-t8": ("up", 30, 11, 21, 4, 8, 1, "none", "add", False, False),
    "same-batch2-step": ("same", 33, 0, 7, 3, 8, 2, "none", None, False, True),
    "gemv4-k1": ("same", 50, 6, 70, 1, 3, 1, "silu", "add", True, False),
    "same-k3-t8-even": ("same", 20, 0, 9, 3, 8, 1, "silu", "add", False, False),
}


@emulation.skip_unless_available()
@pytest.mark.parametrize("ring", [True, False])
@pytest.mark.parametrize("grid", [1, 4, 64])
@pytest.mark.parametrize("case", list(STAGED_CASES))
def test_cuda_chain_staged_entry_matches_float64_pytorch(case, grid, ring, monkeypatch):
    """A staged chain entry (its input copied to shared memory, row tiles over the whole
    reduction, no partials) on `grid` CTAs, against the PyTorch ops in float64: every mode, the
    skip read from a second tensor, odd channel counts and lengths, each condition, an identity
    residual, batch 2 in one tile, the scheduler step in place on a (B, T, C) sample; the
    output poisoned before, so an unwritten element fails. With the ring, where the weight rows
    are whole 16-byte pieces (C_in * K even in float64: three of the cases, one for each of 4, 8
    and 16 columns), each CTA's first tile reads weights copied to shared memory while it waited
    at the barrier (the emulation lands them at once or only at the wait, into poisoned memory);
    its further tiles (grid 1 and 4) read memory."""
    module = importlib.import_module("dp_fast.cuda.conv_block")
    monkeypatch.setattr(module, "STAGED", True)  # staged entries (opt-in: DP_FAST_CUDA_STAGED=1)
    monkeypatch.setattr(module, "_operator", lambda device, name="conv_block": getattr(emulation, name)())
    monkeypatch.setattr(module, "RING", ring)
    mode, c1, c2, c_out, k, t_in, batch, act, cond_kind, res, step = STAGED_CASES[case]
    g = torch.Generator().manual_seed(hash(case) % 1000 + grid)
    f64 = dict(generator=g, dtype=torch.float64)
    x, x2 = torch.randn(batch, c1, t_in, **f64), torch.randn(batch, c2, t_in, **f64) if c2 else None
    t_out = out_length(mode, t_in)
    weight = torch.randn(c_out, c1 + c2, k, **f64) / (c1 + c2) ** 0.5
    bias = torch.randn(c_out, **f64)
    cond = torch.randn(batch, c_out, **f64) if cond_kind else None
    scale = torch.randn(batch, c_out, **f64) if cond_kind == "film" else None
    residual = torch.randn(batch, c_out, t_out, **f64) if res else None
    kw = dict(x2=x2, mode=mode, act=act, cond=cond, cond_scale=scale, residual=residual)
    expected = conv_block_ref(x, weight, bias, **kw)
    if step:
        sample = torch.randn(batch, t_out, c_out, **f64).transpose(1, 2)  # (B, T, C) storage, as the sampler's
        coefs = torch.randn(8, **f64)
        step_args = StepArgs(sample, torch.randn_like(sample), coefs, clip_range=1.5)
        expected = conv_block_ref(x, weight, bias, **kw, step=StepArgs(sample.clone(), step_args.noise, coefs, 1.5))
        out = sample  # the step in place, as the sampler runs it
    else:
        step_args = None
        out = torch.full((batch, c_out, t_out), float("nan"), dtype=torch.float64)
    recorder = module.ChainRecorder(torch.device("cpu"))
    recorder.conv_block(x, weight, bias, **kw, step=step_args, out=out)
    chain = recorder.finish()
    assert [config[15] for config in chain.configs] == [1]  # staged
    assert [config[16] for config in chain.configs] == [int(ring and (c1 + c2) * k % 2 == 0)]  # its ring
    chain.grid = grid
    chain.launch()
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert not torch.isnan(out).any()


@emulation.skip_unless_available()
@pytest.mark.parametrize("ctas,start", [(1, 0), (7, 0), (64, 1 << 31), (132, 0)])
def test_cuda_chain_grid_barrier_holds_between_concurrent_ctas(ctas, start):
    """The chain kernel's grid barrier (kernels/conv_block.cu, GridBarrier) run by concurrent
    threads, one per CTA, 40 times (the emulation of the kernel runs its CTAs one after another,
    so this is where the barrier itself is tested on the CPU): no CTA passes a barrier before
    every CTA's write before it is visible, and the word ends as it started, plus 2^31 per
    barrier (its low bits zero again: nothing to reset between launches)."""
    stale, word = emulation.grid_barrier_check(ctas, 40, start)
    assert stale == 0 and word == (start + 40 * (1 << 31)) % (1 << 32)


@emulation.skip_unless_available()
@pytest.mark.parametrize("ctas", [1, 7, 64, 132])
def test_cuda_chain_flagged_exchange_holds_between_concurrent_ctas(ctas):
    """The chain's flagged exchange (kernels/conv_block.cu, store_flagged and load_flagged) between
    concurrent threads, one per CTA, 40 rounds with no barrier, two slots reused by the round's
    parity (a barrier-free chain's order: a CTA writes a word again only after it has read every
    CTA's value of the round between): every value read is the round's. A reader that took a
    later round's value for its own, or waited for a value overwritten before it looked, would
    read it wrong or wait for ever (the check's watchdog)."""
    assert emulation.flag_exchange_check(ctas, 40) == 0


@emulation.skip_unless_available()
@pytest.mark.parametrize("ctas", [1, 7, 64, 132])
def test_cuda_split_arrival_orders_partials_between_concurrent_ctas(ctas):
    """The split reduction's finish (kernels/conv_block.cu, arrive_at_region) run by concurrent
    threads, one per CTA, 40 times: the CTA that arrives last reads every CTA's partial of its
    round, exactly one CTA arrives last each time, and the counter is back at 0 for the next
    launch. (Under tests/emulation/racecheck.py, an arrival that does not order the partials
    before the last CTA's reads is a reported race even where the values come out right.)"""
    stale, lasts, counter = emulation.region_arrival_check(ctas, 40)
    assert (stale, lasts, counter) == (0, 40, 0)


@emulation.skip_unless_available()
@pytest.mark.parametrize("gn", [None, 2], ids=["staged", "tiled"])
def test_cuda_chain_asks_l2_for_each_blocks_whole_slice(gn, monkeypatch):
    """Every entry's weights are asked of L2 a block ahead (the first two at the start): on a
    grid of one CTA, every line of its first tile's slice of every entry, staged or tiled. Tiled
    entries stream their weights through the weight ring (every 16-byte piece copied); staged
    ones copy their first tile's weights whole (those pieces and no others)."""
    module = importlib.import_module("dp_fast.cuda.conv_block")
    monkeypatch.setattr(module, "STAGED", True)  # staged entries (opt-in: DP_FAST_CUDA_STAGED=1)
    monkeypatch.setattr(module, "_operator", lambda device, name="conv_block": getattr(emulation, name)())
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 40, 8, generator=g, dtype=torch.float64)
    recorder = module.ChainRecorder(torch.device("cpu"))
    weights = []
    for _ in range(4):  # x -> y -> x -> y -> x
        w, b = torch.randn(40, 40, 3, generator=g, dtype=torch.float64) / 11, torch.randn(40, generator=g, dtype=torch.float64)
        norm = GroupNormArgs(gn, torch.ones(40, dtype=torch.float64), torch.zeros(40, dtype=torch.float64)) if gn else None
        x = recorder.conv_block(x, w, b, gn=norm, act="silu")
        weights.append(w)
    chain = recorder.finish()
    chain.launch()
    asked = {a // 128 for a in emulation.last_prefetches()}  # the emulation checks each is a line of the weights
    copied = set(emulation.last_copies())
    for w, config in zip(weights, chain.configs):
        assert config[3] == 8 and config[15] == (gn is None)  # 8 columns; staged without GroupNorm
        assert config[16] == 1  # the ring (rows of 120 x 8 bytes: whole pieces)
        pieces = set(range(w.data_ptr(), w.data_ptr() + w.numel() * 8, 16))
        first_tile = set(range(w.data_ptr(), w.data_ptr() + config[7] * 120 * 8, 16))
        assert (pieces <= copied) if gn else (pieces & copied == first_tile)
        # the first tile: staged, `region` rows over the whole reduction; tiled, 8 rows (64 / 8
        # columns) over the first split's chunks of 256 (the GEMV reduction's)
        rows, share = (config[7], 120) if config[15] else (8, min(120, config[9] * 256))
        lines = {(w.data_ptr() + (r * 120 + c) * 8) // 128 for r in range(rows) for c in range(share)}
        assert lines <= asked, (config, len(lines - asked))


@emulation.skip_unless_available()
def test_cuda_chain_stages_the_lesson_network_and_tiles_groupnorm_blocks(monkeypatch):
    """Which chain entries are staged: every block of the lesson's U-Net at batch 1, the blocks of
    Chi's U-Net without GroupNorm (down- and upsampling, the output conv); none with GroupNorm,
    a 1x1 residual conv, a batch wider than one tile or an input beyond STAGED_BYTES; none with
    DP_FAST_CUDA_STAGED=0 (the module's STAGED). And the operators refuse a staged plan where it
    cannot run: a single launch, or a block with GroupNorm."""
    module = importlib.import_module("dp_fast.cuda.conv_block")
    monkeypatch.setattr(module, "STAGED", True)  # staged entries (opt-in: DP_FAST_CUDA_STAGED=1)
    base = module.plan(1, 16, 256, 768, 0, None, torch.float32, 132)
    staged = module.staged_plan(base, 256, 16, 256, 3, torch.float32, 132, False, False)
    assert staged[15] == 1 and staged[7] == 4 and staged[11] == 64 and staged[8] == staged[6] == 1  # 4 rows a CTA
    assert module.staged_plan(base, 7, 16, 7, 3, torch.float32, 132, False, False)[7::4][:2] == [4, 2]  # 2 tiles
    monkeypatch.setattr(module, "STAGED_ROWS", 2)
    assert module.staged_plan(base, 256, 16, 256, 3, torch.float32, 132, False, False)[7::4][:2] == [2, 128]
    assert module.staged_plan(base, 256, 16, 256, 3, torch.float32, 64, False, False)[7::4][:2] == [4, 64]  # 1 a CTA
    monkeypatch.setattr(module, "STAGED_ROWS", 0)
    down = module.plan(1, 4, 512, 1536, 0, None, torch.float32, 132)  # PushT's downsampling at T=4: 96 KiB a 16-row tile
    assert module.staged_plan(down, 512, 8, 512, 3, torch.float32, 132, False, False)[7::4][:2] == [4, 128]  # 24 KiB
    assert module.staged_plan(down, 512, 8, 512, 3, torch.bfloat16, 132, False, False)[7::4][:2] == [8, 64]  # 24 KiB
    assert module.staged_plan(base, 512, 16, 256, 3, torch.float32, 132, False, False) is not None  # 512 x 17 x 4 bytes
    assert module.staged_plan(base, 512, 16, 256, 3, torch.float64, 132, False, False) is None  # twice that
    assert module.staged_plan(base, 256, 16, 256, 3, torch.float32, 132, True, False) is None  # GroupNorm
    assert module.staged_plan(base, 256, 16, 256, 3, torch.float32, 132, False, True) is None  # 1x1 residual conv
    wide = module.plan(3, 8, 256, 768, 0, None, torch.float32, 132)  # batch 3 at T=8: two tiles
    assert module.staged_plan(wide, 256, 8, 256, 3, torch.float32, 132, False, False) is None
    monkeypatch.setattr(module, "STAGED", False)
    assert module.staged_plan(base, 256, 16, 256, 3, torch.float32, 132, False, False) is None

    launches = []
    module = _emulated_cuda_ops(monkeypatch, launches)
    monkeypatch.setattr(module, "STAGED", True)
    for name in ("lesson", "chi-film-k5"):
        policy = NETWORKS[name]()
        policy.model.to(torch.float64)
        sampler = sampler_for(policy, "cuda", module.conv_block, module.ChainRecorder)
        sampler.run(policy._condition(_obs(policy, 1)), torch.randn(1, policy.chunk_size, policy.action_dim, dtype=torch.float64),
                    2, None)
        (cap,) = sampler._captures.values()
        configs = [config for chain in cap.chains for config in chain.configs]
        assert configs and all((config[15] == 1) == (config[2] == 0) for config in configs), name  # config[2]: GroupNorm
        assert name != "lesson" or all(config[15] == 1 for config in configs)
    # W1's network planned for an H100's 132 SMs runs on 64 CTAs: its 256 channels in tiles of 4
    # rows at T=16 (8 at T=8; the 7-channel output conv: 2 tiles), no CTA without a tile anywhere
    monkeypatch.setattr(module, "sm_count", lambda device: 132)
    recorder = module.ChainRecorder(torch.device("cpu"))
    policy = DiffusionPolicy(7, 20, chunk_size=16, hidden=256)  # float32: up1's 512-channel input fits 36 KiB
    x = torch.randn(1, policy.chunk_size, policy.action_dim)
    FastSampler(policy, recorder.conv_block).denoise(x, 3, policy._condition(_obs(policy, 1)))  # records, runs nothing
    chain = recorder.finish()
    assert [c[11] for c in chain.configs] == [64, 64, 32, 32, 32, 64, 64, 2] and chain.grid == 64

    x, w, b = torch.randn(1, 6, 8, dtype=torch.float64), torch.randn(5, 6, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    config = module.staged_plan(module.plan(1, 8, 5, 18, 0, None, torch.float64, 4), 6, 8, 5, 3, torch.float64, 4, False, False)
    out = torch.empty(1, 5, 8, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="invalid plan"):
        emulation.conv_block()(x, None, w, b, *[None] * 11, out, b, b, config, [0.0, 0.0])
    gn = torch.ones(5, dtype=torch.float64)
    cpg = list(config)
    cpg[2] = 5  # one GroupNorm group of 5 channels
    with pytest.raises(RuntimeError, match="a staged plan takes a block without GroupNorm"):
        emulation.conv_block_params()(x, None, w, b, gn, gn, *[None] * 9, out, b, b, cpg, [1e-5, 0.0])


@emulation.skip_unless_available()
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_chain_flagged_exchange_hands_on_each_dtypes_values_unchanged(dtype, monkeypatch):
    """The lesson's U-Net in float32 and bfloat16 through the emulated chain, with and without
    the flagged exchange: the same values to the last bit (a flagged word carries the value as
    the producer stored it, rounded to the activations' dtype, and the reader converts it as a
    plain read would), and the run with flags had no grid barrier."""
    launches = []
    module = _emulated_cuda_ops(monkeypatch, launches)
    monkeypatch.setattr(module, "STAGED", True)  # staged entries (opt-in: DP_FAST_CUDA_STAGED=1)
    policy = NETWORKS["lesson"](precision="bf16" if dtype == torch.bfloat16 else "fp32")
    obs = _obs(policy, 1)
    noise = torch.randn(1, policy.chunk_size, policy.action_dim)
    got = {}
    for flags in (True, False):
        monkeypatch.setattr(module, "CHAIN_FLAGS", flags)
        sampler = FastSampler(policy, module.conv_block, module.ChainRecorder)
        got[flags] = sampler.run(policy._condition(obs), noise.clone(), 2, torch.Generator().manual_seed(5))
        (cap,) = sampler._captures.values()
        hidden = [a for name, a in cap.acts.items() if name != "x"]  # (the sample itself stays float32)
        assert all(a.dtype == dtype for a in hidden) and cap.chains is not None
        assert emulation.last_chain_barrier_free() == flags
    assert torch.equal(got[True], got[False]) and torch.isfinite(got[True]).all()


@emulation.skip_unless_available()
def test_cuda_chain_operator_checks_the_flagged_exchanges_links(monkeypatch):
    """The chain operator's checks of the flagged exchange (csrc/conv_block_params.h,
    check_chain_links), through the emulation: four staged entries at batch 2 (x -> h, x -> g,
    cat(h, x) -> y, cat(x, g) -> z: a slot's values beside values read directly, in either
    operand) linked as the recorder links them run without a grid barrier and match float64
    PyTorch; an input an earlier entry wrote, read directly, runs behind barriers; a link to an
    entry that did not write the operand, to the entry itself, an entry writing another's slot, a
    flags tensor too small, and links on a plan that is not staged are refused with what was
    expected."""
    module = importlib.import_module("dp_fast.cuda.conv_block")
    monkeypatch.setattr(module, "STAGED", True)  # staged entries (opt-in: DP_FAST_CUDA_STAGED=1)
    monkeypatch.setattr(module, "_operator", lambda device, name="conv_block": getattr(emulation, name)())
    monkeypatch.setattr(module, "CHAIN_FLAGS", True)
    g = torch.Generator().manual_seed(11)
    f64 = dict(generator=g, dtype=torch.float64)
    x = torch.randn(2, 12, 8, **f64)
    shapes = ((10, 12), (9, 12), (7, 22), (5, 21))
    w1, w2, w3, w4 = (torch.randn(c_out, c_in, 3, **f64) / c_in ** 0.5 for c_out, c_in in shapes)
    b1, b2, b3, b4 = (torch.randn(c_out, **f64) for c_out, _ in shapes)
    h, gg, y, z = (torch.full((2, c, 8), float("nan"), dtype=torch.float64) for c, _ in shapes)

    def record(links=None):
        recorder = module.ChainRecorder(torch.device("cpu"))
        if links is not None:  # the third entry's links replaced
            real = recorder._links
            monkeypatch.setattr(recorder, "_links", lambda config, *a: links if len(recorder.entries) == 2 else real(config, *a))
        recorder.conv_block(x, w1, b1, act="silu", out=h)
        recorder.conv_block(x, w2, b2, act="silu", out=gg)
        recorder.conv_block(h, w3, b3, x2=x, act="mish", out=y)
        recorder.conv_block(x, w4, b4, x2=gg, act="none", out=z)
        return recorder.finish()

    chain = record()
    assert [c[17:] for c in chain.configs] == [[0, 0, 1], [0, 0, 2], [1, 0, 3], [0, 2, 4]]
    chain.launch()
    assert emulation.last_chain_barrier_free()
    h_ref, g_ref = conv_block_ref(x, w1, b1, act="silu"), conv_block_ref(x, w2, b2, act="silu")
    torch.testing.assert_close(y, conv_block_ref(h_ref, w3, b3, x2=x, act="mish"), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z, conv_block_ref(x, w4, b4, x2=g_ref), rtol=1e-12, atol=1e-12)
    unlinked = record([0, 0, 3])  # h read directly: right, but only behind a grid barrier
    unlinked.launch()
    assert not emulation.last_chain_barrier_free()
    for links, match in (([2, 0, 3], "entry 2 reads x from entry 1's flagged slot, but that entry is not the last to write x"),
                         ([3, 0, 3], "entry 2 reads x from entry 2's flagged slot"),
                         ([1, 0, 1], "entry 2 writes flagged slot 0; an entry writes its own")):
        with pytest.raises(RuntimeError, match=re.escape(match)):
            record(links).launch()
    short = record()
    short.flags = short.flags[:-1]
    with pytest.raises(RuntimeError, match="flags must be a contiguous int64 tensor of at least"):
        short.launch()
    config = module.plan(2, 8, 10, 36, 0, None, torch.float64, 4) + [1, 0, 1]  # not staged
    with pytest.raises(RuntimeError, match="x_from, x2_from and flag_slot .* only a staged plan takes"):
        emulation.conv_block_params()(x, None, w1, b1, *[None] * 11, h, b1, b1, config, [0.0, 0.0])


@emulation.skip_unless_available()
def test_cuda_chain_operator_rejects_what_it_cannot_run():
    """torch.ops.dp_fast.conv_block_chain's own checks (csrc/conv_block_params.h), through the
    emulation: bytes that are not whole entries, entries not made by conv_block_params (random
    bytes, one byte changed), a plan wider than the chain kernel's, mixed weight dtypes, a probe
    of another dtype, too short or not contiguous."""
    module = importlib.import_module("dp_fast.cuda.conv_block")
    params_op, chain = emulation.conv_block_params(), emulation.conv_block_chain()

    def entry(t, dtype):
        x, w, b = torch.randn(1, 4, t, dtype=dtype), torch.randn(6, 4, 3, dtype=dtype), torch.randn(6, dtype=dtype)
        config = module.plan(1, t, 6, 12, 0, None, dtype, 4)
        return params_op(x, None, w, b, *[None] * 11, torch.empty(1, 6, t, dtype=dtype), b, b, config, [0.0, 0.0]), (x, w, b)

    (good, keep), (wide, keep2), (other, keep3) = entry(8, torch.float64), entry(32, torch.float64), entry(8, torch.float32)
    barrier = torch.zeros(2, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="whole number"):
        chain(good[:-8], good[:-8], barrier, 1)
    forged = torch.randint(0, 256, good.shape, dtype=torch.uint8)
    changed = good.clone()
    changed[8] ^= 1  # a bit of x's pointer
    for bad in (forged, changed):
        with pytest.raises(RuntimeError, match="entry 1 was not made by conv_block_params in this process, or was changed since"):
            chain(torch.cat([good, bad]), torch.cat([good, bad]), barrier, 1)
    with pytest.raises(RuntimeError, match="plan of 32 columns; the chain kernel takes at most 16"):
        chain(torch.cat([good, wide]), torch.cat([good, wide]), barrier, 1)
    with pytest.raises(RuntimeError, match="the first one's weight dtype"):
        chain(torch.cat([good, other]), torch.cat([good, other]), barrier, 1)
    # the probe: int64, a row of kChainProbeFields for every entry and CTA of the grid asked for
    for probe in (torch.zeros(2 * 3 * 8, dtype=torch.int32), torch.zeros(2 * 3 * 8 - 1, dtype=torch.int64),
                  torch.zeros(2 * 3 * 16, dtype=torch.int64)[::2]):
        with pytest.raises(RuntimeError, match="probe must be a contiguous int64 tensor of at least 48 values"):
            chain(torch.cat([good, good]), torch.cat([good, good]), barrier, 3, None, probe)


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


def test_the_capture_cache_keeps_the_most_recently_used_up_to_max_captures(backend):
    """Past policy.max_captures the least recently used capture is dropped (a warning once,
    at the caller's line), and a batch size asked for again is captured again: right actions
    at every call, where the cache grew by a graph and its buffers for every batch size."""
    policy = _chi(DDIMScheduler(**SCHED))
    policy.max_captures = 2
    batches = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch in (1, 2, 1, 3, 2, 2):
            obs, noise = _obs(policy, batch, seed=batch), torch.randn(batch, 8, 2, device=DEVICE)
            ref = policy.sample(obs, 3, noise=noise, backend="reference")
            assert (policy.sample(obs, 3, noise=noise, backend=backend) - ref).abs().max().item() < 1e-4
            batches.append([key[0] for key in _sampler_of(policy, backend)._captures])
    assert batches == [[1], [1, 2], [2, 1], [1, 3], [3, 2], [3, 2]]
    (warning,) = [w for w in caught if "max_captures" in str(w.message)]
    assert "max_captures=2" in str(warning.message) and "(batch 2, 3 steps)" in str(warning.message)
    assert warning.filename == __file__
    policy.max_captures = 0
    with pytest.raises(ValueError, match="max_captures must be an int >= 1, got 0"):
        policy.sample(_obs(policy, 4), 3, backend=backend)


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
    # an EMA-style update: every parameter written in place under no_grad
    with torch.no_grad():
        for p in policy.model.parameters():
            p.mul_(0.9).add_(0.01)
    ref = policy.sample(obs, 4, noise=noise, backend="reference")
    assert (policy.sample(obs, 4, noise=noise, backend=backend) - ref).abs().max().item() < 1e-4
    # parameters replaced by others (assign=True sets new Parameter objects on the modules)
    policy.model.load_state_dict(_lesson(seed=11).model.state_dict(), assign=True)
    ref = policy.sample(obs, 4, noise=noise, backend="reference")
    assert (policy.sample(obs, 4, noise=noise, backend=backend) - ref).abs().max().item() < 1e-4
    # a whole network set in the model's place
    policy.model = _lesson(seed=12).model
    ref = policy.sample(obs, 4, noise=noise, backend="reference")
    assert (policy.sample(obs, 4, noise=noise, backend=backend) - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("make", [_lesson, lambda **kw: _chi(DDIMScheduler(**SCHED), **kw)], ids=["lesson", "chi"])
def test_a_write_through_data_is_read_by_the_next_sample(make, backend):
    """A write to the parameters through ``.data`` moves no version counter: diffusers'
    ``EMAModel.copy_to`` writes the averaged weights into the model that way (``param.data.copy_``,
    ``torch._foreach_copy_`` of the ``.data``). The fast path read the float32 parameters in place
    but kept its packed copies as they were: the actions of no network (0.13 off for the lesson's,
    0.25 for Chi's). The copies (a transposed convolution's weight, the conditioning layers'
    concatenated) and the hoisted step embedding are now made again by every sample, inside its
    graph. Each part is written alone, then all through diffusers' call; each write moves the
    actions, so a sample that missed one fails."""
    policy = make()
    obs, noise = _obs(policy, 2), torch.randn(2, 8, policy.action_dim, device=DEVICE)
    parts = {"lesson": ["up2.0.weight", "time_embed.1.weight", "down1.2.weight"],
             "chi": ["up_modules.0.2.conv.weight", "down_modules.0.0.cond_encoder.1.weight",
                     "diffusion_step_encoder.3.bias", "mid_modules.0.blocks.0.block.0.weight"]}
    params = dict(policy.model.named_parameters())
    prev = policy.sample(obs, 3, noise=noise, backend=backend)
    for name in parts["lesson" if "up2.0.weight" in params else "chi"]:
        params[name].data.mul_(1.5).add_(0.02)
        ref = policy.sample(obs, 3, noise=noise, backend="reference")
        assert (ref - prev).abs().max().item() > 1e-3, name
        assert (policy.sample(obs, 3, noise=noise, backend=backend) - ref).abs().max().item() < 1e-4, name
        prev = ref
    averaged = [p.detach() * 0.8 + 0.01 for p in params.values()]
    torch._foreach_copy_([p.data for p in params.values()], averaged)  # diffusers' EMAModel.copy_to
    ref = policy.sample(obs, 3, noise=noise, backend="reference")
    assert (ref - prev).abs().max().item() > 1e-3
    assert (policy.sample(obs, 3, noise=noise, backend=backend) - ref).abs().max().item() < 1e-4


def test_in_bf16_a_write_through_data_is_read_after_release_fast_path(backend):
    """In bfloat16 from a float32 model every weight the kernels read is a copy, made again when a
    version counter moves, which a write through ``.data`` does not do (README): after such a
    write, ``release_fast_path()`` makes the next sample read the weights as they are."""
    policy = _chi(DDIMScheduler(**SCHED), precision="bf16")
    obs, noise = _obs(policy, 2), torch.randn(2, 8, 2, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    before = policy.sample(obs, 3, noise=noise, backend=backend)
    for p in policy.model.parameters():
        p.data.mul_(1.5)  # actions 0.47 to 0.58 (relative) from before's, over 4 seeds
    policy.release_fast_path()
    ref = policy.sample(obs, 3, noise=noise, backend="reference")
    assert _rel(before, ref) > 0.2
    assert _rel(policy.sample(obs, 3, noise=noise, backend=backend), ref) < 5e-2


def test_copy_sources_makes_every_packed_copy_again():
    """``copy_sources`` writes every element of every packed copy of a program, from the
    parameters as they are: poisoned copies, new parameters written through ``.data``, and the
    program equals one built afresh, in float32 (the few copies that reorder or gather) and in
    bfloat16 (every weight a copy)."""
    from dp_fast._fastpath import _program_tensors, build_program, copy_sources

    for make in (_lesson, lambda: _chi(DDIMScheduler(**SCHED), down_dims=(8, 16, 24), k=3, groups=8, film=False)):
        model = make().model
        for dtype in (torch.float32, torch.bfloat16):
            program = build_program(model, dtype)
            copies = {id(dst._base if dst._base is not None else dst): dst._base if dst._base is not None else dst for dst, _ in program.sources}
            assert copies
            g = torch.Generator().manual_seed(4)
            for p in model.parameters():
                p.data.copy_(torch.randn(p.shape, generator=g))
            for t in copies.values():
                t.fill_(float("nan"))
            copy_sources(program.sources)
            fresh = build_program(model, dtype)
            for mine, theirs in zip(_program_tensors(program), _program_tensors(fresh)):
                assert torch.equal(mine, theirs)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_float32_weights_are_read_in_place_and_a_replaced_parameter_is_never_written(precision, backend):
    """The fast path reads float32 weights in the parameters' own memory (no second copy of the
    network; the transposed convolutions' and the concatenated conditioning layers' are packed
    copies), bfloat16 ones from copies. A parameter replaced by another (load_state_dict with
    assign=True) makes the sampler build its program and capture anew, following the new
    parameters, and it never writes the old ones, which the caller may still hold."""
    policy = _chi(DDIMScheduler(**SCHED), precision=precision)
    sampler = _sampler_of(policy, backend)
    params = {p.untyped_storage().data_ptr() for p in policy.model.parameters()}
    convs = [blk.weight for blk in sampler.program.blocks if blk.mode != "up"]
    shared = [w.untyped_storage().data_ptr() in params for w in convs]
    assert shared == [precision == "fp32"] * len(convs)
    assert not any(blk.weight.untyped_storage().data_ptr() in params for blk in sampler.program.blocks if blk.mode == "up")
    obs, noise = _obs(policy, 2), torch.randn(2, 8, 2, device=DEVICE)
    policy.sample(obs, 3, noise=noise, backend=backend)
    old = list(policy.model.parameters())
    kept = [p.detach().clone() for p in old]
    other = _chi(DDIMScheduler(**SCHED), seed=3).model
    policy.model.load_state_dict(other.state_dict(), assign=True)
    ref = policy.sample(obs, 3, noise=noise, backend="reference")
    bound = 1e-4 if precision == "fp32" else 5e-2
    assert _rel(policy.sample(obs, 3, noise=noise, backend=backend), ref) < bound
    assert all(torch.equal(p, k) for p, k in zip(old, kept))  # the replaced parameters as they were
    with torch.no_grad():  # and in place again, on the new ones
        for p in policy.model.parameters():
            p.mul_(0.9)
    ref = policy.sample(obs, 3, noise=noise, backend="reference")
    assert _rel(policy.sample(obs, 3, noise=noise, backend=backend), ref) < bound


def test_a_write_to_the_step_encoder_alone_reaches_the_steps_hoisted_at_capture(backend):
    """The step part of the hoisted conditioning (_fastpath.hoist_steps: the step embedding through
    every block's conditioning layer) is computed when a sample is captured: a write to the step
    encoder's weights alone, every block's weights as they were, must reach it before the next
    sample(), as in the reference."""
    policy = _chi(DDIMScheduler(**SCHED))
    obs, noise = _obs(policy, 2), torch.randn(2, 8, 2, device=DEVICE)
    before = policy.sample(obs, 3, noise=noise, backend=backend)
    with torch.no_grad():
        for p in policy.model.diffusion_step_encoder.parameters():
            p.mul_(1.5)
    after = policy.sample(obs, 3, noise=noise, backend=backend)
    ref = policy.sample(obs, 3, noise=noise, backend="reference")
    assert (after - before).abs().max().item() > 1e-3
    assert (after - ref).abs().max().item() < 1e-4


def test_a_changed_schedule_is_never_replayed_stale(backend):
    """A capture keeps its schedule (coefficient table, noise draws, clip bound, timesteps): a
    setting of the scheduler changed, one of its tensors written in place, or another scheduler
    set in the policy's, and the next sample() follows it as the reference does; the captures of
    the old schedule are dropped. Each change moves the actions, so a stale replay fails."""
    policy = _chi(DDIMScheduler(**SCHED))
    obs, noise = _obs(policy, 2), 3 * torch.randn(2, 8, 2, device=DEVICE)  # wide: the clip bound matters
    sched = policy.scheduler
    first = sched

    def changed(prev):
        ref = policy.sample(obs, 3, noise=noise, generator=torch.Generator().manual_seed(5), backend="reference")
        fast = policy.sample(obs, 3, noise=noise, generator=torch.Generator().manual_seed(5), backend=backend)
        assert (fast - ref).abs().max().item() < 1e-4
        assert (ref - prev).abs().max().item() > 1e-3
        assert len(_sampler_of(policy, backend)._captures) == 1
        return ref

    acts = changed(torch.zeros_like(noise) + 99)
    sched.clip_sample = False
    acts = changed(acts)
    sched.prediction_type = "sample"
    acts = changed(acts)
    sched.alphas_cumprod.mul_(0.98)  # in place: same tensor, its version counter moves
    acts = changed(acts)
    policy.scheduler = DDIMScheduler(**dict(SCHED, beta_schedule="linear"))  # another object
    acts = changed(acts)
    policy.scheduler = DDPMScheduler(**SCHED)  # another kind, drawing noise on its steps
    acts = changed(acts)
    policy.scheduler = first  # back to the first: captured anew, as it is now
    changed(acts)


def test_another_network_set_in_the_policys_place_runs_as_itself(backend):
    """A network of the same sizes but other GroupNorm groups, set in the policy's place: its
    program is built anew, not its weights copied into the old program's blocks. It shares the
    first network's parameters' memory (``load_state_dict(..., assign=True)``), so neither an
    address nor a version counter moves: the sampler sees that the model is another one. Its
    samples equal a fresh policy's, and the reference's."""

    def net(groups, seed):
        return _randomize(ConditionalUnet1D(2, global_cond_dim=6, diffusion_step_embed_dim=16, down_dims=(16, 24), n_groups=groups, cond_predict_scale=True), seed).to(DEVICE)

    a, b = net(4, 0), net(8, 3)
    b.load_state_dict(a.state_dict(), assign=True)
    assert all(p.data_ptr() == q.data_ptr() for p, q in zip(a.parameters(), b.parameters()))
    policy = DiffusionPolicy.from_model(a, DDIMScheduler(**SCHED), chunk_size=8, n_obs_steps=2)
    obs, noise = _obs(policy, 2), torch.randn(2, 8, 2, device=DEVICE)
    before = policy.sample(obs, 3, noise=noise, backend=backend)
    policy.model = b
    after = policy.sample(obs, 3, noise=noise, backend=backend)
    ref = policy.sample(obs, 3, noise=noise, backend="reference")
    fresh = DiffusionPolicy.from_model(b, DDIMScheduler(**SCHED), chunk_size=8, n_obs_steps=2).sample(obs, 3, noise=noise, backend=backend)
    assert (ref - before).abs().max().item() > 1e-3
    assert (after - ref).abs().max().item() < 1e-4
    assert torch.allclose(after, fresh, atol=1e-6, rtol=0)


def test_a_copied_policy_samples_its_own_network(backend):
    """copy.copy, copy.deepcopy and pickle of a policy that has sampled on a fast backend: the
    copy builds a sampler of its own. The original's reads the original's network and holds its
    captures: a shallow copy sharing it sampled the original's network (2.0 off), and a CUDA
    graph (stood in for here by a lock, which does not copy either) made deepcopy and pickle
    fail. Each copy is given another network; the original keeps sampling its own."""
    import copy
    import pickle
    import threading

    policy = _chi(DDIMScheduler(**SCHED))
    obs, noise = _obs(policy, 2), torch.randn(2, 8, 2, device=DEVICE)
    before = policy.sample(obs, 3, noise=noise, backend=backend)
    _sampler_of(policy, backend).held = threading.Lock()
    for seed, copy_of in enumerate((copy.copy, copy.deepcopy, lambda p: pickle.loads(pickle.dumps(p))), start=4):
        twin = copy_of(policy)
        twin.model = _chi(DDIMScheduler(**SCHED), seed=seed).model
        ref = twin.sample(obs, 3, noise=noise, backend="reference")
        assert (ref - before).abs().max().item() > 1e-3
        assert (twin.sample(obs, 3, noise=noise, backend=backend) - ref).abs().max().item() < 1e-4
        assert torch.equal(policy.sample(obs, 3, noise=noise, backend=backend), before)


def test_a_moved_policy_drops_the_samplers_of_where_it_was(backend):
    """A sampler made for the model's old device or dtype holds the weights' old memory (a
    float32 program reads the parameters' own, which ``model.to()`` leaves to it) and its
    captures: ``policy.to()`` drops it at once, a move of the model itself when the next sampler
    is built. The moved policy samples as the reference does."""
    import gc
    import weakref

    policy = _chi(DDIMScheduler(**SCHED))
    obs, noise = _obs(policy, 2), torch.randn(2, 8, 2, device=DEVICE)
    policy.sample(obs, 3, noise=noise, backend=backend)
    old = weakref.ref(_sampler_of(policy, backend))
    assert policy.to(torch.float64) is policy
    gc.collect()
    assert old() is None and not policy._fast_samplers
    obs, noise = obs.double(), noise.double()
    ref = policy.sample(obs, 3, noise=noise, backend="reference")
    assert (policy.sample(obs, 3, noise=noise, backend=backend) - ref).abs().max().item() < 1e-4
    old = weakref.ref(_sampler_of(policy, backend))
    policy.model.float()  # the model moved by hand: its old sampler stays until the next is built
    obs, noise = obs.float(), noise.float()
    ref = policy.sample(obs, 3, noise=noise, backend="reference")
    assert (policy.sample(obs, 3, noise=noise, backend=backend) - ref).abs().max().item() < 1e-4
    gc.collect()
    assert old() is None and [k.dtype for k in policy._fast_samplers] == [torch.float32]


def test_release_fast_path_drops_the_samplers_and_the_next_call_builds_anew(backend):
    import gc
    import weakref

    policy = _lesson()
    obs, noise = _obs(policy, 2), torch.randn(2, 8, 3, device=DEVICE)
    before = policy.sample(obs, 4, noise=noise, backend=backend)
    old = weakref.ref(_sampler_of(policy, backend))
    policy.release_fast_path()
    gc.collect()
    assert old() is None and not policy.__dict__.get("_fast_samplers")
    policy.release_fast_path()  # nothing to drop: fine
    assert torch.equal(policy.sample(obs, 4, noise=noise, backend=backend), before)
    assert len(policy._fast_samplers) == 1  # built anew by that call


def _swap_activation(policy):
    policy.model.mid_modules[0].blocks[0].block[2] = torch.nn.SiLU()


@pytest.mark.parametrize("change, error, later", [
    (_swap_activation, r"module 'mid_modules.0.blocks.0.block.2' is a SiLU where the fast backends compute ConditionalUnet1D's Mish", True),
    (lambda p: p.model.final_conv[0].block.__setitem__(1, torch.nn.GroupNorm(8, 16, affine=False).to(DEVICE)),
     r"module 'final_conv.0.block.1' \(GroupNorm\) has affine=False, parameters=\(\)", True),
    (lambda p: p.model.final_conv.append(torch.nn.Tanh()), r"module 'final_conv.2' is not in the ConditionalUnet1D", True),
    (lambda p: setattr(p.model.down_modules[0][0].blocks[1].block[0], "padding", (1,)),
     r"module 'down_modules.0.0.blocks.1.block.0' \(Conv1d\) has padding=\(1,\); .* with padding=\(2,\)", False),
    (lambda p: setattr(p.model.mid_modules[1], "cond_predict_scale", False), r"'mid_modules.1' .* has cond_predict_scale=False", False),
], ids=["activation", "groupnorm-affine", "appended", "padding", "film"])
def test_a_network_other_than_its_class_builds_is_refused_by_the_fast_backends(change, error, later, backend):
    """The fast path computes the network the model's class builds, from its weights: a module
    put in another's place (``later``: after a first sample(), too) or a module's setting
    changed (before the first fast sample(): one changed in place later is not seen) gave
    another network's actions with no error. Now an explicit fast backend refuses it, naming the
    module, and ``auto`` samples it with the reference, with a warning."""
    policy = _chi(DDIMScheduler(**SCHED))
    obs, noise = _obs(policy, 2), torch.randn(2, 8, 2, device=DEVICE)
    if later:
        policy.sample(obs, 3, noise=noise, backend=backend)
    change(policy)
    with pytest.raises(NotImplementedError, match=error):
        policy.sample(obs, 3, noise=noise, backend=backend)
    if not later:  # the reference cannot run these networks either (their shapes do not fit)
        return
    with pytest.warns(UserWarning, match=f"the {backend} backend cannot serve this request \\(.*the fast backends compute"):
        out = _sampler._falling_back_to_reference(backend)(policy, policy._condition(obs), noise, 3, None)
    assert torch.equal(out, policy.sample(obs, 3, noise=noise, backend="reference"))
    if change is not _swap_activation:
        return
    policy.model.mid_modules[0].blocks[0].block[2] = torch.nn.Mish()  # put back: fast again
    ref = policy.sample(obs, 3, noise=noise, backend="reference")
    assert (policy.sample(obs, 3, noise=noise, backend=backend) - ref).abs().max().item() < 1e-4


def _hook_on_a_block(policy):
    return policy.model.mid_modules[0].blocks[1].register_forward_hook(lambda module, args, out: out * 0.5)


def _pre_hook_on_the_model(policy):
    return policy.model.register_forward_pre_hook(lambda module, args, kwargs: ((args[0] + 0.1, *args[1:]), kwargs), with_kwargs=True)


def _global_hook(policy):
    return torch.nn.modules.module.register_module_forward_hook(lambda module, args, out: out + 0.01 if isinstance(module, torch.nn.Mish) else None)


@pytest.mark.parametrize("hook, error", [
    (_hook_on_a_block, r"module 'mid_modules.0.blocks.1' has a forward hook"),
    (_pre_hook_on_the_model, r"the model has a forward hook"),
    (_global_hook, r"torch has a global forward hook"),
], ids=["module", "model-pre", "global"])
def test_a_forward_hook_is_refused_by_the_fast_backends_and_run_by_auto(hook, error, backend):
    """The reference calls the model, which runs its forward hooks (and torch's global ones); the
    fast backends compute the network from its weights and run none, so a hook that changes what
    a module takes or gives was skipped with no error. A hook registered after the first fast
    sample() registers no module, so the tables are looked at on every call. Now an explicit fast
    backend refuses it, ``auto`` samples with the reference (the hook run), and once the hook is
    removed the fast path serves the model again."""
    policy = _chi(DDIMScheduler(**SCHED))
    obs, noise = _obs(policy, 2), torch.randn(2, 8, 2, device=DEVICE)
    plain = policy.sample(obs, 3, noise=noise, backend=backend)
    handle = hook(policy)
    try:
        hooked = policy.sample(obs, 3, noise=noise, backend="reference")
        assert (hooked - plain).abs().max().item() > 1e-3  # the hook changes the actions
        with pytest.raises(NotImplementedError, match=error + ", which the fast backends do not run"):
            policy.sample(obs, 3, noise=noise, backend=backend)
        with pytest.warns(UserWarning, match=f"the {backend} backend cannot serve this request \\(.*forward hook"):
            out = _sampler._falling_back_to_reference(backend)(policy, policy._condition(obs), noise, 3, None)
        assert torch.equal(out, hooked)
    finally:
        handle.remove()
    assert torch.equal(policy.sample(obs, 3, noise=noise, backend=backend), plain)


def test_a_pruned_module_is_refused_by_the_fast_backends(backend):
    """torch.nn.utils.prune keeps the weight as ``weight_orig`` and a mask, multiplied by a
    forward pre-hook: the fast path would read neither. Refused for its hook, and by the
    structure check too (the module's parameters are not its class's); ``prune.remove`` makes it
    a plain weight again."""
    from torch.nn.utils import prune

    from dp_fast import _fastpath

    policy = _chi(DDIMScheduler(**SCHED))
    obs, noise = _obs(policy, 2), torch.randn(2, 8, 2, device=DEVICE)
    policy.sample(obs, 3, noise=noise, backend=backend)
    conv = policy.model.mid_modules[0].blocks[0].block[0]
    prune.l1_unstructured(conv, "weight", amount=0.5)
    with pytest.raises(NotImplementedError, match=r"module 'mid_modules.0.blocks.0.block.0' has a forward hook"):
        policy.sample(obs, 3, noise=noise, backend=backend)
    with pytest.raises(NotImplementedError, match=r"module 'mid_modules.0.blocks.0.block.0' \(Conv1d\) has parameters=\('bias', 'weight_orig'\)"):
        _fastpath.check_structure(policy.model)
    prune.remove(conv, "weight")
    ref = policy.sample(obs, 3, noise=noise, backend="reference")
    assert (policy.sample(obs, 3, noise=noise, backend=backend) - ref).abs().max().item() < 1e-4


def test_the_lessons_network_is_checked_module_for_module_too():
    from dp_fast import _fastpath
    from dp_fast.models import LessonUNet1D

    net = LessonUNet1D(3, 5, 24, 100)
    _fastpath.check_structure(net)
    net.up1[1] = torch.nn.ReLU()
    with pytest.raises(NotImplementedError, match="module 'up1.1' is a ReLU where the fast backends compute LessonUNet1D's SiLU"):
        _fastpath.check_structure(net)
    net = LessonUNet1D(3, 5, 24, 100)
    net.time_embed[0] = torch.nn.Embedding(100, 24, max_norm=1.0)
    with pytest.raises(NotImplementedError, match=r"module 'time_embed.0' \(Embedding\) has max_norm=1.0"):
        _fastpath.check_structure(net)


def test_the_structure_checks_verdict_is_kept_until_a_module_is_registered(monkeypatch):
    """backend="auto" asks on every call whether the fast path serves the model; a refusal is
    not worked out again (16 ms for W2's network) until a module or parameter is registered."""
    from dp_fast import _fastpath
    from dp_fast.models import LessonUNet1D

    calls, check = [], _fastpath._check_structure
    monkeypatch.setattr(_fastpath, "_check_structure", lambda model: (calls.append(model), check(model)))
    net = LessonUNet1D(3, 5, 24, 100)
    net.up1[1] = torch.nn.ReLU()
    for _ in range(3):
        with pytest.raises(NotImplementedError, match="is a ReLU"):
            _fastpath.check_structure(net)
    assert len(calls) == 1
    net.up1[1] = torch.nn.SiLU()
    _fastpath.check_structure(net)
    _fastpath.check_structure(net)
    assert len(calls) == 2


def test_what_the_fast_path_reads_from_the_modules_may_differ_from_the_defaults(backend):
    """GroupNorm's eps and group count are read from each module, a subclass whose forward is
    its class's computes the same network, and attributes of a module's own (a tag) change
    nothing: those are sampled on the fast path."""

    class Renamed(ConditionalUnet1D):
        pass

    torch.manual_seed(0)
    net = _randomize(Renamed(2, global_cond_dim=6, diffusion_step_embed_dim=16, down_dims=(16, 24), kernel_size=5, n_groups=4), 0)
    net.mid_modules[0].blocks[1].block[1].eps = 1e-2
    net.down_modules[1][0].blocks[0].block[1] = torch.nn.GroupNorm(2, 24)
    net.tag, net.mid_modules[0].note = "pusht-v1", 3
    _randomize(net, 1)
    policy = DiffusionPolicy.from_model(net.to(DEVICE), DDPMScheduler(**SCHED), chunk_size=8, n_obs_steps=2)
    obs, noise = _obs(policy, 2), torch.randn(2, 8, 2, device=DEVICE)
    ref = policy.sample(obs, 3, noise=noise, generator=torch.Generator().manual_seed(0), backend="reference")
    fast = policy.sample(obs, 3, noise=noise, generator=torch.Generator().manual_seed(0), backend=backend)
    assert (fast - ref).abs().max().item() < 1e-4


def test_a_scheduler_with_a_step_of_its_own_is_refused_by_the_fast_backends(backend):
    """The fast path computes every step from the class's coefficient table: a subclass whose
    step is its own was sampled with the class's step, with no error. A subclass that keeps its
    class's step (another name, a helper method) is sampled on the fast path."""

    class Damped(DDIMScheduler):
        def step(self, model_output, timestep, sample, **kwargs):
            return super().step(0.5 * model_output, timestep, sample, **kwargs)

    class Named(DDIMScheduler):
        def describe(self):
            return "named"

    policy = _chi(DDIMScheduler(**SCHED))
    obs, noise = _obs(policy, 2), torch.randn(2, 8, 2, device=DEVICE)
    policy.sample(obs, 3, noise=noise, backend=backend)
    policy.scheduler = Damped(**SCHED)
    with pytest.raises(NotImplementedError, match="the scheduler is a Damped, whose step is its own; the fast backends compute DDIMScheduler's"):
        policy.sample(obs, 3, noise=noise, backend=backend)
    with pytest.raises(NotImplementedError, match="whose step is its own"):  # checked again, not taken as seen
        policy.sample(obs, 3, noise=noise, backend=backend)
    policy.scheduler = Named(**SCHED)
    ref = policy.sample(obs, 3, noise=noise, backend="reference")
    assert (policy.sample(obs, 3, noise=noise, backend=backend) - ref).abs().max().item() < 1e-4


def test_a_gpu_the_cuda_kernels_have_no_code_for_is_refused_by_name(monkeypatch):
    """A GPU the build did not target (TORCH_CUDA_ARCH_LIST; a Blackwell one for the default
    8.0 and 9.0) failed at the first launch inside the capture, with the CUDA error alone; the
    cuda backend now says so before any work, with the fix (and ``auto`` takes the reference)."""
    import dp_fast.cuda as cuda_backend

    def no_image(index):
        raise RuntimeError("cudaErrorNoKernelImageForDevice: no kernel image is available for execution on the device")

    monkeypatch.setattr(_ext, "kernel_image", no_image)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "NVIDIA GeForce RTX 5090")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (12, 0))
    why = cuda_backend.unsupported_device.__wrapped__(1)
    assert why.startswith("dp_fast's CUDA kernels have no code for cuda:1 (NVIDIA GeForce RTX 5090, compute capability 12.0): "
                          "cudaErrorNoKernelImageForDevice")
    assert 'rebuild the extension with TORCH_CUDA_ARCH_LIST="12.0"' in why
    monkeypatch.setattr(_ext, "kernel_image", lambda index: (90, 90))
    assert cuda_backend.unsupported_device.__wrapped__(1) is None
    monkeypatch.undo()
    monkeypatch.setattr(_ext, "cuda_compiled", lambda: False)
    with pytest.raises(RuntimeError, match="built without its CUDA kernels"):
        _ext.kernel_image(0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not _ext.cuda_compiled(), reason="needs a GPU and the CUDA kernels")
def test_the_cuda_kernels_have_code_for_this_gpu():
    import dp_fast.cuda as cuda_backend

    index = torch.cuda.current_device()
    binary, ptx = _ext.kernel_image(index)
    major, minor = torch.cuda.get_device_capability(index)
    assert binary // 10 == major and binary <= 10 * major + minor and ptx > 0
    assert cuda_backend.unsupported_device(index) is None


def test_weights_version_lists_the_parameters_again_only_after_a_registration():
    """FastSampler's check of the weights before each sample() (_fastpath._WeightsVersion): the
    parameters listed once and read from that list on every call, listed again (the tree of
    modules walked) only after a submodule or a parameter was registered somewhere (a module or
    a parameter set in another's place), or when the policy has another model."""
    from types import SimpleNamespace

    from dp_fast import _fastpath

    walks = []

    class Net(torch.nn.Sequential):
        def modules(self):
            walks.append(1)
            return super().modules()

    net = Net(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    version = _fastpath._WeightsVersion(SimpleNamespace(model=net))
    first = version()
    assert version() == first and len(walks) == 1
    with torch.no_grad():
        net[1].weight.add_(1.0)  # in place: the version counter moves
    assert version() != first and len(walks) == 1
    changed = version()
    net[1].weight = torch.nn.Parameter(torch.randn(2, 4))  # another parameter on the same module: listed again
    seen = version()
    _, _, ptrs, _ = seen  # (the model, its modules' count of changes, every parameter's data_ptr and version), in the list's order
    assert seen != changed and ptrs[-2] == net[1].weight.data_ptr() and len(walks) == 2
    assert version() == seen and len(walks) == 2
    net[1].bias.data = torch.randn(2)  # new memory, the version counter unmoved (module.to() does this)
    assert version() != seen and len(walks) == 2
    seen = version()
    net[0] = torch.nn.Linear(3, 4)  # another submodule: listed again
    assert version() != seen and len(walks) == 3
    seen = version()
    net.append(torch.nn.Mish())  # a module without weights, another network all the same
    assert version() != seen and len(walks) == 4
    seen = version()
    torch.nn.Linear(2, 2)  # a registration elsewhere: listed again, nothing changed here
    assert version() == seen and len(walks) == 5
    version.policy = SimpleNamespace(model=Net(torch.nn.Linear(3, 4)))
    version()
    assert len(walks) == 6


@pytest.mark.parametrize("name", ["lesson", "chi-film-k5"])
def test_sample_leaves_the_callers_noise_and_obs_as_they_were(name, backend):
    """sample() hands the caller's noise to its backend without a copy: neither the reference
    nor a fast backend writes it (or the observation), whatever the scheduler draws per step."""
    policy = NETWORKS[name]()
    obs = _obs(policy, 2)
    noise = torch.randn(2, policy.chunk_size, policy.action_dim, device=DEVICE)
    kept_obs, kept_noise = obs.clone(), noise.clone()
    for b in ("reference", backend, backend):  # the fast backend twice: its capture, then a replay
        out = policy.sample(obs, 3, noise=noise, generator=torch.Generator().manual_seed(0), backend=b)
        assert out.data_ptr() != noise.data_ptr()
        assert torch.equal(noise, kept_noise) and torch.equal(obs, kept_obs), b


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sample_on_gpu_waits_on_its_input_check_once_the_work_is_queued(backend, sample_events):
    """On a GPU, sample() queues the sampler's work behind its NaN/Inf check and waits on the
    check's verdict only then (no round trip to the host before the graph's replay). Bad input
    still raises, naming the tensor, and the capture it ran through still gives the right answer."""
    policy = _chi(DDIMScheduler(**SCHED))
    obs, noise = _obs(policy, 2), torch.randn(2, 8, 2, device=DEVICE)
    ref = policy.sample(obs, 3, noise=noise, backend="reference")
    sample_events.clear()
    assert (policy.sample(obs, 3, noise=noise, backend=backend) - ref).abs().max().item() < 1e-4
    assert sample_events == [["obs", "noise"], "run", "wait"]
    bad_noise, bad_obs = noise.clone(), obs.clone()
    bad_noise[1, 3, 0], bad_obs[0, 1, 2] = float("inf"), float("nan")
    with pytest.raises(ValueError, match="^noise contains NaN or Inf"):
        policy.sample(obs, 3, noise=bad_noise, backend=backend)
    with pytest.raises(ValueError, match="^obs contains NaN or Inf"):
        policy.sample(bad_obs, 3, backend=backend)
    assert (policy.sample(obs, 3, noise=noise, backend=backend) - ref).abs().max().item() < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend_name", ["reference", "triton", "cuda"])
def test_sample_inside_a_callers_graph_capture_is_refused_clearly(backend_name):
    """sample() inside the caller's own torch.cuda.graph capture: a clear error before any
    work (the input check's wait on the host, a fast backend's own graph cannot be captured),
    and the policy samples as before once the capture is over."""
    if backend_name == "cuda" and not _ext.cuda_compiled():
        pytest.skip("needs the CUDA kernels")
    policy = _chi(DDIMScheduler(**SCHED))
    obs, noise = _obs(policy, 2), torch.randn(2, 8, 2, device=DEVICE)
    ref = policy.sample(obs, 3, noise=noise, backend="reference")
    policy.sample(obs, 3, noise=noise, backend=backend_name)  # its own capture made already
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="^sample\\(\\) cannot run inside a CUDA graph capture"):
        with torch.cuda.graph(graph):
            policy.sample(obs, 3, noise=noise, backend=backend_name)
    assert (policy.sample(obs, 3, noise=noise, backend=backend_name) - ref).abs().max().item() < 1e-4


def test_warmup_captures_what_the_first_sample_then_replays(backend):
    """policy.warmup builds the sampler and makes the capture the first sample() of that batch
    size and step count would make (its static buffers then serve that call), drawing nothing
    from the global RNGs."""
    policy = _chi(DDPMScheduler(**SCHED))
    states = torch.get_rng_state(), torch.cuda.get_rng_state() if DEVICE == "cuda" else None
    policy.warmup(batch_size=2, n_steps=3, backend=backend)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert DEVICE != "cuda" or torch.equal(torch.cuda.get_rng_state(), states[1])
    captures = _sampler_of(policy, backend)._captures
    assert len(captures) == 1
    warmed = next(iter(captures.values()))
    obs, noise = _obs(policy, 2), torch.randn(2, 8, 2, device=DEVICE)
    ref = policy.sample(obs, 3, noise=noise, generator=torch.Generator().manual_seed(5), backend="reference")
    fast = policy.sample(obs, 3, noise=noise, generator=torch.Generator().manual_seed(5), backend=backend)
    assert len(captures) == 1 and next(iter(captures.values())) is warmed
    assert (warmed.graph is not None) == (DEVICE == "cuda")
    assert (fast - ref).abs().max().item() < 1e-4


def test_a_first_sample_in_inference_mode_leaves_later_ones_outside_it_working(backend):
    """What lasts from one call to the next (packed weights, a capture's static buffers) is made
    outside inference mode: a first sample() under torch.inference_mode() made them inference
    tensors, and every later call outside it failed ("Inplace update to inference tensor outside
    InferenceMode"), as did the re-packing after a weight update."""
    policy = _lesson()
    obs, noise = _obs(policy, 2), torch.randn(2, 8, 3, device=DEVICE)
    ref = policy.sample(obs, 3, noise=noise, backend="reference")
    with torch.inference_mode():
        assert (policy.sample(obs, 3, noise=noise, backend=backend) - ref).abs().max().item() < 1e-4
        assert not torch.is_grad_enabled() and torch.is_inference_mode_enabled()  # the caller's modes, back
    assert (policy.sample(obs, 3, noise=noise, backend=backend) - ref).abs().max().item() < 1e-4
    policy.train_step(obs, torch.randn(2, 8, 3, device=DEVICE), torch.optim.SGD(policy.model.parameters(), lr=0.5))
    ref = policy.sample(obs, 3, noise=noise, backend="reference")
    with torch.inference_mode():
        assert (policy.sample(obs, 3, noise=noise, backend=backend) - ref).abs().max().item() < 1e-4
    assert (policy.sample(obs, 3, noise=noise, backend=backend) - ref).abs().max().item() < 1e-4
    sampler = _sampler_of(policy, backend)
    lasting = _fastpath_tensors(sampler)
    assert lasting and not any(t.is_inference() or t.requires_grad for t in lasting)


def test_a_first_sample_under_autocast_keeps_the_policys_precision(backend):
    """A fast backend computes in the policy's precision whatever autocast says: under a
    caller's torch.autocast the hoisted conditioning came out in bfloat16, and the step part a
    capture keeps stayed so for the later calls outside it too (1e-3 off the reference)."""
    policy = _lesson()
    obs, noise = _obs(policy, 2), torch.randn(2, 8, 3, device=DEVICE)
    ref = policy.sample(obs, 3, noise=noise, backend="reference")
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        assert (policy.sample(obs, 3, noise=noise, backend=backend) - ref).abs().max().item() < 1e-4
        assert torch.is_autocast_enabled(DEVICE)  # the caller's, back
    assert (policy.sample(obs, 3, noise=noise, backend=backend) - ref).abs().max().item() < 1e-4


def test_the_fast_path_works_on_the_policys_gpu_whichever_is_current(monkeypatch):
    """A policy on cuda:1 while cuda:0 is the current device: the fast path makes cuda:1 current
    for its launches, its capture's side stream and its graph (checked here with the CUDA calls
    stood in for: no machine of this project has two GPUs)."""
    from dp_fast import _fastpath

    entered = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", lambda d: entered.append(d) or contextlib.nullcontext())
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: contextlib.nullcontext())
    with _fastpath._own_modes(torch.device("cuda", 1)):
        assert entered == [torch.device("cuda", 1)]
    with _fastpath._own_modes(torch.device("cuda", 0)), _fastpath._own_modes(torch.device("cpu")):
        assert len(entered) == 1


def _fastpath_tensors(sampler):
    """The tensors a FastSampler keeps from one call to the next: its program's, and its captures'."""
    from dp_fast import _fastpath

    kept = [t for t in _fastpath._program_tensors(sampler.program) if t is not None]
    for cap in sampler._captures.values():
        kept += [cap.cond, cap.x, cap.noise, cap.coefs, cap.step_inputs, cap.steps, *cap.acts.values()]
    return kept


def _sample_from_threads(jobs, backend, calls, streams=False):
    """Runs ``calls`` sample() calls for each (policy, obs, noise) of ``jobs``, each job in its
    own thread (on its own CUDA stream with ``streams``), all started together; returns each
    job's outputs."""
    import threading

    start, outs, errors = threading.Barrier(len(jobs)), [[] for _ in jobs], []

    def work(i, policy, obs, noise):
        try:
            stream = torch.cuda.Stream() if streams else None
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                start.wait()
                for _ in range(calls):
                    outs[i].append(policy.sample(obs, 3, noise=noise, backend=backend))
                if stream is not None:
                    stream.synchronize()
        except Exception as e:  # noqa: BLE001 - reported by the test's thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return outs


def test_sample_from_several_threads_gives_each_its_own_actions(backend):
    """Two threads sampling one policy share its captures' static buffers: each call queues its
    work alone (_fastpath._DeviceOrder). Without that, one thread got the other's actions (and
    Triton's interpreter, not thread-safe, failed)."""
    policy = _lesson()
    jobs = [(policy, _obs(policy, 2, seed=s), torch.randn(2, 8, 3, device=DEVICE)) for s in (1, 2)]
    want = [policy.sample(obs, 3, noise=noise, backend="reference") for _, obs, noise in jobs]
    for outs, ref in zip(_sample_from_threads(jobs, backend, calls=2), want):
        for out in outs:
            assert (out - ref).abs().max().item() < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sample_from_threads_on_their_own_streams_on_gpu(backend):
    """Threads on their own CUDA streams, sampling one policy and two others (whose first calls
    capture while the others replay): no two calls' launches overlap (the arrival counters are
    the device's), each gets its own actions."""
    a, b = _lesson(seed=1), _chi(DDIMScheduler(**SCHED))
    jobs = [(p, _obs(p, 2, seed=s), torch.randn(2, 8, p.action_dim, device=DEVICE)) for p, s in ((a, 1), (a, 2), (b, 3), (b, 4))]
    want = [p.sample(obs, 3, noise=noise, backend="reference") for p, obs, noise in jobs]
    for outs, ref in zip(_sample_from_threads(jobs, backend, calls=20, streams=True), want):
        for out in outs:
            assert (out - ref).abs().max().item() < 1e-4


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


def test_a_precision_set_later_is_checked_as_the_constructor_checks_it(backend):
    """policy.precision set after construction to something not in PRECISIONS: refused by name
    when the fast sampler is built, where a string other than "bf16" or "tf32" ran in fp32."""
    policy = _lesson()
    policy.precision = "bfloat16"
    with pytest.raises(ValueError, match="precision must be one of .* got 'bfloat16'"):
        policy.sample(_obs(policy, 1), 3, backend=backend)
    policy.precision = "bf16"
    assert policy.sample(_obs(policy, 1), 3, backend=backend).shape == (1, 8, 3)


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
@pytest.mark.skipif(not torch.cuda.is_available() or not _ext.cuda_compiled(), reason="needs a GPU and the CUDA kernels")
@pytest.mark.parametrize("staged", [True, False], ids=["staged", "tiled"])
def test_lesson_network_at_w1_size_through_the_cuda_chain_on_gpu(staged, monkeypatch):
    """W1's network (hidden 256, horizon 16, lesson DDIM 10 steps) through the CUDA chain: the
    whole loop in one cooperative launch, its blocks staged (up1's 512-channel input near the
    36 KiB limit, 64 CTAs) or tiled, against the reference loop on the same noise; twice (a graph
    replay)."""
    module = importlib.import_module("dp_fast.cuda.conv_block")
    monkeypatch.setattr(module, "STAGED", staged)
    torch.manual_seed(0)
    policy = DiffusionPolicy(7, 20, chunk_size=16, hidden=256).to("cuda")
    obs = torch.randn(1, 20, device="cuda")
    noise = torch.randn(1, 16, 7, device="cuda")
    ref = policy.sample(obs, 11, noise=noise, backend="reference")
    sampler = sampler_for(policy, "cuda", module.conv_block, module.ChainRecorder)
    for _ in range(2):
        got = sampler.run(policy._condition(obs), noise.clone(), 11, None)
        assert (got - ref).abs().max().item() < 1e-4
    (cap,) = sampler._captures.values()
    (chain,) = cap.chains
    assert all(c[15] == int(staged) for c in chain.configs) and len(chain.configs) == 8 * 10


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


@emulation.skip_unless_available()
@pytest.mark.skipif(not _ext.cuda_compiled(), reason="needs the CUDA build of the extension (its operator schemas)")
@pytest.mark.parametrize("backend_name", ["eager", "aot_eager"])
def test_cuda_conv_block_front_traces_under_torch_compile_without_a_gpu(monkeypatch, backend_name):
    """The CUDA backend's Python front (checks, plan, scratch, the operator's lookup) under
    torch.compile(fullgraph=True), on the CPU: the operator's CPU kernel is the kernel's emulation
    (tests/emulation/), registered for this test only. Caught on the GPU machine (2026-11-26):
    dynamo traced into the extension's first import and its fake kernels' registration."""
    module = importlib.import_module("dp_fast.cuda.conv_block")
    library = torch.library.Library("dp_fast", "IMPL")
    try:
        library.impl("conv_block", emulation.conv_block(), "CPU")
        monkeypatch.setattr(module, "_operator", lambda device, name="conv_block": getattr(_ext.ops(), name))
        x = torch.randn(2, 8, 16, dtype=torch.float64)
        w, b = torch.randn(12, 8, 3, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
        fn = torch.compile(lambda x: module.conv_block(x, w, b, act="silu") * 2, fullgraph=True, backend=backend_name)
        expected = torch.nn.functional.silu(torch.nn.functional.conv1d(x, w, b, padding=1)) * 2
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert _rel(fn(x), expected) < 1e-12
        # the plan's cached split (ops.conv_block.split_reduction) is traced uncached: no warning
        assert not [str(c.message) for c in caught if "lru_cache" in str(c.message)]
    finally:
        library._destroy()
        torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not _ext.cuda_compiled(), reason="needs a GPU and the CUDA kernels")
def test_cuda_conv_block_op_traces_under_torch_compile():
    from dp_fast.cuda import conv_block

    x = torch.randn(2, 8, 16, device="cuda")
    w, b = torch.randn(12, 8, 3, device="cuda"), torch.randn(12, device="cuda")
    fn = torch.compile(lambda x: conv_block(x, w, b, act="silu") * 2, fullgraph=True)
    expected = torch.nn.functional.silu(torch.nn.functional.conv1d(x, w, b, padding=1)) * 2
    assert _rel(fn(x), expected) < 1e-5


@pytest.mark.skipif(DEVICE == "cpu" and not INTERPRETED, reason="needs a GPU or TRITON_INTERPRET=1")
def test_triton_probe_reads_every_block_of_a_whole_sample():
    """bench/diag/probe.py's input, from a whole sample() of Chi's network (three levels, 2
    steps, batch 1) probed (dp_fast.triton.conv_block.probing): one probed launch per block per
    evaluation, in order (on a GPU those captured in the graph, whose replays write them), every
    row written, and the diagnostic's per-block summary of them; the actions are those of the
    sample unprobed."""
    np = pytest.importorskip("numpy")
    tcb = importlib.import_module("dp_fast.triton.conv_block")
    probe = load_diag("probe")
    policy = NETWORKS["chi-add-k3-3lvl"]()
    obs = _obs(policy, 1)
    noise = torch.randn(1, policy.chunk_size, policy.action_dim, device=DEVICE)

    def sample():  # DDPM: the same step noise each time
        return policy.sample(obs, 2, noise=noise, generator=torch.Generator(DEVICE).manual_seed(3), backend="triton")

    plain = sample()
    policy.__dict__.pop("_fast_samplers")  # captured anew, with its probes
    with tcb.probing() as records:
        probed = sample()
    assert torch.equal(probed, plain)
    blocks = len(_sampler_of(policy, "triton").program.blocks)
    launches = [r for r in records if r.captured == (DEVICE == "cuda")]
    assert len(launches) == 2 * blocks and blocks >= 10
    assert [r.reduction for r in launches[:blocks]] == [r.reduction for r in launches[blocks:]]
    if DEVICE == "cuda":  # the rows of a capture are written by its replays (the CPU's, poisoned first, by the run)
        for r in launches:
            r.rows.fill_(-1)
        assert torch.equal(sample(), plain)
    s = probe.summarize([r.rows.cpu().numpy() for r in launches], blocks)
    assert s["evaluations"] == 2 and len(s["rows"]) == blocks
    assert [r["programs"] for r in s["rows"]] == [int(np.prod(r.grid)) for r in launches[:blocks]]
    assert all(r["work"] >= 0 and r["tail"] >= 0 and r["loop"] >= 0 for r in s["rows"]), s["rows"]


@emulation.skip_unless_available()
@pytest.mark.parametrize("staged", [False, True], ids=["tiled", "staged"])
def test_cuda_chain_probe_reads_every_entry_of_the_loop_emulated(staged, monkeypatch):
    """dp_fast.cuda.conv_block.probing(): a chain recorded inside launches with its probe, and
    its kernel (kernels/conv_block.cu, emulated on a grid of one CTA, which runs every tile)
    writes one row per entry for that CTA, the rows of the CTAs it did not run left as they were
    (-1): its phases in order, the launch's grid, the entry's staged bit and every tile of the
    entry; the actions those of the chain unprobed; bench/diag/probe.py's chain summary of the
    rows, one row per block of the network."""
    np = pytest.importorskip("numpy")
    launches = []
    module = _emulated_cuda_ops(monkeypatch, launches)
    monkeypatch.setattr(module, "STAGED", staged)
    policy = _lesson()
    policy.model.to(torch.float64)
    obs = _obs(policy, 1)
    noise = torch.randn(1, policy.chunk_size, policy.action_dim, dtype=torch.float64)
    plain = sampler_for(policy, "cuda", module.conv_block, module.ChainRecorder).run(policy._condition(obs), noise.clone(), 3, None)
    policy.__dict__.pop("_fast_samplers")
    with module.probing() as records:
        sampler = sampler_for(policy, "cuda", module.conv_block, module.ChainRecorder)
        got = sampler.run(policy._condition(obs), noise.clone(), 3, None)
    assert torch.equal(got, plain)
    (rec,) = records
    (chain,) = next(iter(sampler._captures.values())).chains
    assert rec.rows is chain.probe and launches[-1][5] is chain.probe
    rows = rec.rows.numpy()
    entries, grid, blocks = len(chain.configs), chain.grid, len(sampler.program.blocks)
    evaluations = len(next(iter(sampler._captures.values())).draws)
    assert rows.shape == (entries * grid, len(module.CHAIN_PROBE_FIELDS)) and entries == blocks * evaluations
    assert grid > 1 and (rows[entries:] == -1).all()  # the emulation runs one CTA: a row per entry
    ran = rows[:entries]
    assert (ran[:, 7] >> 32 == 1).all() and ((ran[:, 7] >> 31 & 1) == [c[15] for c in chain.configs]).all()
    tiles = [c[11] if c[15] else c[11] * c[12] * c[8] for c in chain.configs]  # staged: co_tiles; else co x n x split
    assert ((ran[:, 7] & 0x7FFFFFFF) == tiles).all(), (ran[:, 7] & 0x7FFFFFFF, tiles)
    assert (np.diff(ran[:, 2:6], axis=1) >= 0).all() and (np.diff(ran[:, 2]) >= 0).all() and (ran[:, 1] >= ran[:, 0]).all()
    probe = load_diag("probe")
    s = probe.chain_summarize(rows, entries, blocks)
    assert s["evaluations"] == evaluations and s["ctas"] == 1 and len(s["rows"]) == blocks
    assert all(r["work"] >= 0 and r["total"] >= r["work"] and r["idle"] == 0 for r in s["rows"]), s["rows"]
    with pytest.raises(ValueError, match="whole number of evaluations"):
        probe.chain_summarize(rows, entries, blocks + 1)


def test_chain_probe_summary_on_rows_made_by_hand():
    """bench/diag/probe.py's chain arithmetic: two entries (one evaluation of two blocks) on two
    CTAs, the SM clock at 1 cycle a ns, the global timer exact: each entry's work from the
    release before, its barrier from the last arrival to the first release, its total to the last
    release; the last entry has no barrier."""
    np = pytest.importorskip("numpy")
    probe = load_diag("probe")

    def row(start, worked, arrived, released, tiles, staged=0):
        return [start, released, start, worked, arrived, released, 0, 2 << 32 | staged << 31 | tiles]

    rows = np.array([
        row(0, 3000, 3200, 5000, 2), row(100, 2000, 2100, 5300, 1),  # entry 0
        row(5000, 9000, 9000, 9000, 1), row(5300, 6000, 6000, 6000, 0),  # entry 1: the last
        *[[-1] * 8] * 4,  # a grid of 4 asked for, 2 run
    ], dtype=np.int64)
    s = probe.chain_summarize(rows, 2, 2, rate=1.0)
    e0, e1 = s["rows"]
    assert e0["work"] == pytest.approx(3.0) and e0["barrier"] == pytest.approx(5.0 - 3.2) and e0["total"] == pytest.approx(5.3)
    assert e0["work_med"] == pytest.approx(2.45) and e0["arrive"] == pytest.approx(0.15) and e0["skew"] == pytest.approx(0.3)
    assert e1["work"] == pytest.approx(9.0 - 5.3) and np.isnan(e1["barrier"]) and e1["idle"] == 1
    assert e1["work_med"] == pytest.approx(4.0) and e1["total"] == pytest.approx(9.0 - 5.3)
    assert s["ctas"] == 2
    rep = dict(workload="W0", method="cuda-chain", dtype="fp32", device="cpu", torch="-", triton="-", settings="-", replays=1,
               replay_us_per_eval=9.0, summary=probe.median_of([s]))
    text = probe.format_report(rep, [dict(mode="same", c_in=4, c_out=8, k=3, gn=False)] * 2)
    assert "per evaluation: work 6.7 us, barrier 1.8 us, total 9.0 us" in text and "2 CTAs" in text, text
    bad = rows.copy()
    bad[3, 1] = -1  # a CTA that did not write its row
    with pytest.raises(ValueError, match="unwritten"):
        probe.chain_summarize(bad, 2, 2)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE == "cpu" or not _ext.cuda_compiled(), reason="needs a GPU and the CUDA kernels")
def test_cuda_chain_probe_on_gpu():
    """The chain's probe at W1's size on the GPU: a replay of the captured loop (its rows
    poisoned first) has every CTA the launch ran write a row per entry, phases in order, and
    bench/diag/probe.py summarizes them per block; the actions those of the chain unprobed."""
    module = importlib.import_module("dp_fast.cuda.conv_block")
    torch.manual_seed(0)
    policy = DiffusionPolicy(7, 20, chunk_size=16, hidden=256).to("cuda")
    obs = torch.randn(1, 20, device="cuda")
    noise = torch.randn(1, 16, 7, device="cuda")
    plain = sampler_for(policy, "cuda", module.conv_block, module.ChainRecorder).run(policy._condition(obs), noise.clone(), 10, None)
    policy.__dict__.pop("_fast_samplers")
    with module.probing() as records:
        sampler = sampler_for(policy, "cuda", module.conv_block, module.ChainRecorder)
        sampler.run(policy._condition(obs), noise.clone(), 10, None)
    (rec,) = records
    rec.rows.fill_(-1)
    assert torch.equal(sampler.run(policy._condition(obs), noise.clone(), 10, None), plain)
    s = load_diag("probe").chain_summarize(rec.rows.cpu().numpy(), len(rec.configs), 8)
    assert s["evaluations"] == 10 and 1 <= s["ctas"] <= rec.rows.shape[0] // len(rec.configs)
    # each entry after the one before's last release (the clocks of different rows are placed by
    # the global timer, so only orders a whole entry apart are asserted)
    assert all(r["total"] > 0 and r["total"] >= r["work"] for r in s["rows"]), s["rows"]
