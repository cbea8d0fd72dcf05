"""Random networks against the reference, on the CPU: a search for configurations the
parametrized tests do not name.

Each case draws a network (Chi's ConditionalUnet1D with 1-3 levels, shrinking or growing
down_dims, kernel 3 or 5, FiLM or additive conditioning, any group count; or the lesson's
U-Net), a batch size, a timestep and, for half the cases, a plan of the split reduction, then
compares one network evaluation of a fast backend with the reference in float64 (relative
error under 1e-10), and for some cases a whole ``sample()`` on the same noise (max abs
difference under 1e-5: the fast path's step coefficients are float64, the reference scheduler's
float32, as diffusers' are). Not collected by pytest (minutes per hundred cases); run by hand:

    TRITON_INTERPRET=1 python tests/fuzz.py --backend triton --count 100 --seed 0
    python tests/fuzz.py --backend cuda-emulated --count 50

Prints a line per case and exits 1 if any case failed or raised. On a busy machine an emulated
launch can outlast the emulation's 60 s watchdog (a Chi network takes about 30 s alone on two
cores): run the CUDA emulation with the machine to itself. It found the shrinking
network whose up level is as wide as its input (2026-11-29), which both backends refused.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import random
import sys
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dp_fast import DiffusionPolicy  # noqa: E402
from dp_fast._fastpath import sampler_for  # noqa: E402
from dp_fast.models import ConditionalUnet1D  # noqa: E402
from dp_fast.schedulers import DDIMScheduler, DDPMScheduler  # noqa: E402

PLAN_KNOBS = ("TARGET_PROGRAMS_PER_SM", "MIN_CHUNKS_PER_SPLIT", "GEMV_MAX_COLUMNS")


def _backend(name: str):
    """(conv_block module, backend name for sampler_for, its conv_block function)."""
    if name == "cuda-emulated":
        from emulation import load as emulation

        op = emulation.conv_block()
        module = importlib.import_module("dp_fast.cuda.conv_block")
        module._operator = lambda device: op
        module.dependent_launch = lambda device: True  # planned as on an H100: the emulation checks every prefetch
        return module, "cuda", module.conv_block
    module = importlib.import_module("dp_fast.triton.conv_block")
    return module, "triton", module.conv_block


def _policy(rng: random.Random, g: torch.Generator) -> tuple[DiffusionPolicy, str]:
    if rng.random() < 2 / 3:
        levels, groups = rng.choice([1, 2, 3]), rng.choice([1, 2, 3, 4, 8])
        first = groups * 8 // math.gcd(groups, 8)  # Chi's final Conv1dBlock keeps 8 groups whatever n_groups is
        dims = tuple((first if j == 0 else groups) * rng.randint(1, 4) for j in range(levels))
        k, film, obs_dim, n_obs = rng.choice([3, 5]), rng.random() < 0.5, rng.randint(1, 6), rng.choice([1, 2, 3])
        horizon = 2 ** max(levels - 1, 0) * rng.choice([2, 3, 4, 5, 8])
        net = ConditionalUnet1D(rng.choice([1, 2, 7]), global_cond_dim=obs_dim * n_obs, diffusion_step_embed_dim=rng.choice([4, 8, 10]),
                                down_dims=dims, kernel_size=k, n_groups=groups, cond_predict_scale=film).double()
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / max(p[0].numel(), 1) ** 0.5 + 0.05)
        clip = rng.random() < 0.5
        sched = (DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=clip) if rng.random() < 0.5
                 else DDIMScheduler(num_train_timesteps=100, clip_sample=clip))
        policy = DiffusionPolicy.from_model(net, sched, chunk_size=horizon, n_obs_steps=n_obs)
        return policy, f"chi dims={dims} k={k} groups={groups} film={film} obs={obs_dim}x{n_obs} H={horizon} {type(sched).__name__} clip={clip}"
    action, obs_dim, hidden, horizon = rng.randint(1, 8), rng.randint(1, 9), rng.choice([4, 6, 12, 24, 33]), 4 * rng.choice([1, 2, 3, 4])
    torch.manual_seed(rng.randrange(1 << 30))
    policy = DiffusionPolicy(action, obs_dim, chunk_size=horizon, hidden=hidden)
    policy.model.double()
    return policy, f"lesson A={action} obs={obs_dim} hidden={hidden} H={horizon}"


def run_case(seed: int, module, backend: str, conv_block, defaults: dict, sample_share: float) -> tuple[bool | None, str]:
    """(True, or False where the fast backend differs, or None where the reference cannot run the
    network; a description)."""
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    for name, value in defaults.items():
        setattr(module, name, value)
    if rng.random() < 0.5:
        module.TARGET_PROGRAMS_PER_SM, module.MIN_CHUNKS_PER_SPLIT = rng.choice([1, 2, 1000]), rng.choice([1, 2, 3])
    policy, desc = _policy(rng, g)
    batch = rng.choice([1, 1, 2, 3, 5])
    shape = (batch, policy.obs_dim) if policy.n_obs_steps == 1 else (batch, policy.n_obs_steps, policy.obs_dim)
    obs = torch.randn(shape, generator=g, dtype=torch.float64)
    x = torch.randn(batch, policy.chunk_size, policy.action_dim, generator=g, dtype=torch.float64)
    t = rng.randint(0, 99)
    cond = policy._condition(obs)
    try:
        expected = policy.denoise(x, torch.full((batch,), t), cond)
    except ValueError as err:  # a network PyTorch itself cannot run (GroupNorm of one value, say): not a case
        return None, f"{desc}: skipped, the reference raised {err}"
    rel = ((sampler_for(policy, backend, conv_block).denoise(x, t, cond) - expected).norm() / expected.norm()).item()
    desc += f" B={batch} plan={[getattr(module, k) for k in defaults]} rel={rel:.1e}"
    ok = rel < 1e-10
    if backend == "triton" and rng.random() < sample_share:
        steps = rng.choice([2, 3, 5])
        same = dict(noise=x, generator=torch.Generator().manual_seed(seed))
        ref = policy.sample(obs, n_steps=steps, backend="reference", **same)
        same["generator"] = torch.Generator().manual_seed(seed)
        diff = (policy.sample(obs, n_steps=steps, backend=backend, **same) - ref).abs().max().item()
        desc += f" sample({steps}) {diff:.1e}"
        ok = ok and diff < 1e-5
    return ok, desc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["triton", "cuda-emulated"], default="triton")
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="the first case's seed; case i has seed + i")
    parser.add_argument("--sample-share", type=float, default=0.5, help="share of Triton cases that also run a whole sample()")
    args = parser.parse_args()
    if args.backend == "triton" and os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        parser.error("the Triton backend runs on the CPU only under TRITON_INTERPRET=1")
    module, backend, conv_block = _backend(args.backend)
    defaults = {k: getattr(module, k) for k in PLAN_KNOBS if hasattr(module, k)}
    failed = skipped = 0
    for seed in range(args.seed, args.seed + args.count):
        try:
            ok, desc = run_case(seed, module, backend, conv_block, defaults, args.sample_share)
        except Exception as err:  # a refusal or a crash of a valid network is a finding too
            ok, desc = False, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
        failed += ok is False
        skipped += ok is None
        print(f"{'skip' if ok is None else 'ok  ' if ok else 'FAIL'} {seed} {desc}", flush=True)
    print(f"{args.count - failed - skipped} of {args.count - skipped} cases agree with the reference ({skipped} skipped)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
