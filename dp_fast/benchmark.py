"""The benchmark harness: SPEC.md's workloads W1-W5, timed for the peer methods and every
dp_fast backend side by side, printed as a table and written as JSON.

    python bench/run.py                      # every workload and method (on a GPU)
    python bench/run.py --quick              # the reduced set (automatic without a GPU)
    python bench/run.py --workloads W1,W2 --methods reference,compile+graph --dtype bf16
    dp-fast bench ...                        # the same options

Methods (one ``sample()`` call each):
  reference        ``policy.sample(backend="reference")``: the PyTorch loop, eager.
  reference+graph  the same loop captured once in one CUDA graph and replayed (GPU only).
  compile+graph    ``torch.compile(model, mode="max-autotune-no-cudagraphs")`` for the network,
                   the whole loop captured in one CUDA graph (GPU only): the strongest thing
                   a user can do without dp_fast.
  <backend>        ``policy.sample(backend=name)`` for every other name in
                   ``dp_fast.available_backends()``; new backends appear here by themselves.
  cuda-chain       the CUDA backend with the whole sampling loop as one chain launch (what
                   DP_FAST_CUDA_CHAIN=1 selects); only when named in --methods.
  cuda-blocks      the CUDA backend with one launch per block (what ``cuda`` does by default);
                   only when named in --methods.

Per row: median ms per ``sample()``; us per network evaluation (ms * 1000 / evaluations); for
a fast backend on a GPU, also its captured loop's graph replayed alone, back to back, per
evaluation ("replay": the GPU's time without the host work a ``sample()`` call does around the
replay; the difference is that host work, which counts against W1's 10 short evaluations most);
speed-up over the strongest peer (the fastest of the three peer methods that ran); the
weight-bandwidth floor (weight bytes / measured device bandwidth, us per evaluation) and how
many times that floor the row takes; the max |difference| from the eager reference's output
on the same noise (deterministic samplers only; the reference runs once, untimed, where it is
not among the methods); and "first s", the seconds from setting the method up to its first
call's end: what a caller waits for a first action, with a fast backend's sampler built, its
kernels compiled (Triton's from its on-disk cache where an earlier run left them) and its loop
captured, or the peers' compilation and capture (``DiffusionPolicy.warmup`` does the backends'
part before a control loop).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable

import torch

from . import __version__, _sampler
from .models import ConditionalUnet1D, LessonUNet1D
from .policy import DiffusionPolicy
from .schedulers import DDIMScheduler, DDPMScheduler, LessonDDIMScheduler

MB = 1e6  # bytes; weight sizes are reported in decimal megabytes, as SPEC.md does
GB = 1e9
SEED = 0

# Device bandwidth is measured with one large device-to-device copy (bytes read + written).
BANDWIDTH_BUFFER_BYTES = {"cuda": 1 << 30, "cpu": 64 << 20}
BANDWIDTH_REPEATS = 10

# Timing: warmup calls, then up to `repeats` timed calls; a method stops early once it has
# MIN_REPEATS calls and has spent MAX_SECONDS_PER_METHOD, so slow eager rows stay bearable.
DEFAULT_WARMUP, DEFAULT_REPEATS = 10, 50
QUICK_WARMUP, QUICK_REPEATS = 2, 3
MIN_REPEATS = 3
MAX_SECONDS_PER_METHOD = 10.0

GRAPH_WARMUP_CALLS = 3  # on a side stream before capture, as torch.cuda.graph's docs require
REPLAYS_PER_TIMING, REPLAY_TIMINGS = 10, 5  # a fast backend's captured loop replayed alone (``replay_ms``)
COMPILE_MODE = "max-autotune-no-cudagraphs"
NOTE_WIDTH = 60  # characters of a note shown in the table (JSON keeps all of it)

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}

PEER_METHODS = ("reference", "reference+graph", "compile+graph")
GPU_ONLY_METHODS = ("reference+graph", "compile+graph")
# A backend run another way, timed only when named: method -> (backend, keyword arguments of its run).
VARIANT_METHODS = {"cuda-chain": ("cuda", {"chain": True}), "cuda-blocks": ("cuda", {"chain": False})}


# -- networks and schedulers, as Chi et al. configure them ------------------------------------------


def _lesson_unet() -> LessonUNet1D:
    return LessonUNet1D(action_dim=7, obs_dim=20, hidden=256, diffusion_steps=100)


def _chi_pusht_lowdim_unet() -> ConditionalUnet1D:
    """PushT low-dim: 2 observation steps x 20 features = global condition 40."""
    return ConditionalUnet1D(
        input_dim=2, global_cond_dim=40, diffusion_step_embed_dim=256, down_dims=(256, 512, 1024),
        kernel_size=5, n_groups=8, cond_predict_scale=True,
    )


def _chi_image_unet() -> ConditionalUnet1D:
    """The image config: 2 observation steps x 66 features = global condition 132."""
    return ConditionalUnet1D(
        input_dim=2, global_cond_dim=132, diffusion_step_embed_dim=128, down_dims=(512, 1024, 2048),
        kernel_size=5, n_groups=8, cond_predict_scale=True,
    )


_CHI_SCHEDULE = dict(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True, prediction_type="epsilon")


def _chi_ddim() -> DDIMScheduler:
    return DDIMScheduler(**_CHI_SCHEDULE, set_alpha_to_one=True, steps_offset=0)


def _chi_ddpm() -> DDPMScheduler:
    return DDPMScheduler(**_CHI_SCHEDULE, variance_type="fixed_small")


def _lesson_ddim() -> LessonDDIMScheduler:
    return LessonDDIMScheduler(num_train_timesteps=100)


# -- workloads ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One row group of SPEC.md's benchmark table: a network, a batch, a sampler."""

    name: str
    network: str  # a human-readable description of the network
    make_model: Callable[[], torch.nn.Module]
    n_obs_steps: int
    batch: int
    horizon: int
    sampler: str  # "lesson-ddim", "ddim" or "ddpm"
    make_scheduler: Callable[[], object]
    n_steps: int  # the n_steps argument of sample()
    deterministic: bool  # the same noise gives the same actions (no noise drawn per step)

    def evaluations(self) -> int:
        """Network evaluations per ``sample()``."""
        scheduler = self.make_scheduler()
        scheduler.set_timesteps(self.n_steps)
        return len(scheduler.timesteps)

    def build_policy(self, device, dtype: torch.dtype, seed: int = SEED) -> DiffusionPolicy:
        """The workload's policy with seeded random weights (speed does not depend on them)."""
        scheduler = self.make_scheduler()  # outside the device context: schedulers live on the CPU
        torch.manual_seed(seed)
        with torch.device(device):
            model = self.make_model()
        model.to(dtype).eval().requires_grad_(False)
        return DiffusionPolicy.from_model(model, scheduler, chunk_size=self.horizon, n_obs_steps=self.n_obs_steps)

    def inputs(self, policy: DiffusionPolicy, seed: int = SEED):
        """(obs, noise) for one ``sample()``, seeded, on the policy's device and dtype."""
        g = torch.Generator().manual_seed(seed)
        obs_shape = (self.batch, policy.obs_dim) if self.n_obs_steps == 1 else (self.batch, self.n_obs_steps, policy.obs_dim)
        obs = torch.randn(obs_shape, generator=g)
        noise = torch.randn((self.batch, self.horizon, policy.action_dim), generator=g)
        return obs.to(policy.device, policy.dtype), noise.to(policy.device, policy.dtype)

    def describe(self) -> dict:
        return dict(
            name=self.name, network=self.network, batch=self.batch, horizon=self.horizon,
            sampler=self.sampler, n_steps=self.n_steps, evaluations=self.evaluations(),
        )


_LESSON = "lesson U-Net h256, action 7, obs 20"
_CHI_LOWDIM = "Chi U-Net PushT low-dim (256,512,1024) k5"
_CHI_IMAGE = "Chi U-Net image (512,1024,2048) k5"

WORKLOADS = {
    w.name: w
    for w in (
        Workload("W1", _LESSON, _lesson_unet, 1, 1, 16, "lesson-ddim", _lesson_ddim, 11, True),  # 10 evaluations
        Workload("W2-ddim16", _CHI_LOWDIM, _chi_pusht_lowdim_unet, 2, 1, 16, "ddim", _chi_ddim, 16, True),
        Workload("W2-ddpm100", _CHI_LOWDIM, _chi_pusht_lowdim_unet, 2, 1, 16, "ddpm", _chi_ddpm, 100, False),
        Workload("W3", _CHI_IMAGE, _chi_image_unet, 2, 1, 16, "ddim", _chi_ddim, 16, True),
        Workload("W4", _CHI_LOWDIM, _chi_pusht_lowdim_unet, 2, 64, 16, "ddim", _chi_ddim, 16, True),
        Workload("W5", _CHI_IMAGE, _chi_image_unet, 2, 1, 64, "ddpm", _chi_ddpm, 100, False),
    )
}
QUICK_WORKLOADS = ("W1", "W2-ddim16")


def weight_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(bytes, tensor count) of the model's parameters, in their current dtype."""
    params = list(model.parameters())
    return sum(p.numel() * p.element_size() for p in params), len(params)


# -- timing ---------------------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], torch.Tensor], device: torch.device, warmup: int, repeats: int,
               max_seconds: float = MAX_SECONDS_PER_METHOD):
    """Calls ``fn`` ``warmup`` times, then times up to ``repeats`` calls (at least MIN_REPEATS,
    stopping once ``max_seconds`` are spent). Returns (times in ms, the last output).
    On a GPU each call is timed with CUDA events around it; on a CPU with perf_counter."""
    out = None
    for _ in range(warmup):
        out = fn()
    _synchronize(device)
    times_ms = []
    started = time.perf_counter()
    for i in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            times_ms.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            out = fn()
            times_ms.append((time.perf_counter() - t0) * 1e3)
        if i + 1 >= MIN_REPEATS and time.perf_counter() - started > max_seconds:
            break
    return times_ms, out


def measure_bandwidth(device: torch.device) -> float:
    """Device memory bandwidth in bytes/s: (bytes read + bytes written) / time of one large
    ``dst.copy_(src)``, the median of BANDWIDTH_REPEATS copies."""
    n_bytes = BANDWIDTH_BUFFER_BYTES["cuda" if device.type == "cuda" else "cpu"]
    src = torch.ones(n_bytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    times_ms, _ = time_calls(lambda: dst.copy_(src), device, warmup=2, repeats=BANDWIDTH_REPEATS, max_seconds=math.inf)
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return 2 * n_bytes / (statistics.median(times_ms) / 1e3)


# -- methods --------------------------------------------------------------------------------------------


class UsageError(ValueError):
    """A request the benchmark cannot run as asked (reported like a bad command-line option)."""


class _CompiledDenoiser:
    """What ``_sampler.reference_loop`` needs of a policy (``scheduler``, ``step_kwargs``,
    ``denoise``), with the network replaced by ``torch.compile(network)``."""

    def __init__(self, policy: DiffusionPolicy, mode: str):
        self.scheduler, self.step_kwargs = policy.scheduler, policy.step_kwargs
        self._model = torch.compile(policy.model, mode=mode)
        self._global_cond = isinstance(policy.model, ConditionalUnet1D)

    def denoise(self, x, timestep, cond):
        if self._global_cond:
            return self._model(x, timestep, global_cond=cond)
        return self._model(x, timestep, cond)


@contextlib.contextmanager
def _host_sync_is_an_error():
    """Makes any GPU->host synchronisation raise, so a loop that would sync inside a capture
    says so clearly instead of failing somewhere in the capture."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


@contextlib.contextmanager
def _tf32(allowed: bool):
    """TF32 in matmuls and cuDNN convolutions on or off (fp32 means fp32 for the peers too:
    cuDNN allows TF32 by default), restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def capture_graph(fn: Callable[[], object], warmup: int = GRAPH_WARMUP_CALLS) -> tuple[torch.cuda.CUDAGraph, object]:
    """``fn``'s launches captured in one CUDA graph, after ``warmup`` calls on a side stream (as
    torch.cuda.graph's docs require; compilation and lazy initialisation happen there). Returns
    the graph and what the captured call returned (its static outputs). A replay launches the
    kernels without the host's work per launch, which for a Triton kernel launched from Python
    can take longer than the kernel itself."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def _whole_loop_in_one_graph(denoiser, obs: torch.Tensor, noise: torch.Tensor, n_steps: int) -> Callable[[], torch.Tensor]:
    """Captures the reference sampling loop over ``denoiser`` (every step) in one CUDA graph.

    The scheduler reads its timesteps on the host (CPU tensors, ``.tolist()``) while the loop is
    being recorded, so the graph holds every step's constants; DDPM's step noise comes from the
    default CUDA generator, which graph capture supports (each replay draws fresh noise).
    Returns a function that copies obs and noise into the static inputs and replays.
    """
    static_obs, static_noise = obs.clone(), noise.clone()
    batch = obs.shape[0]

    def loop():
        cond = static_obs.reshape(batch, -1)  # the policy's observation-history flattening, a view
        return _sampler.reference_loop(denoiser, cond, static_noise, n_steps, None)

    loop()  # lazy initialisation (cuDNN, cuBLAS, torch.compile's compilation and autotuning)

    def checked_loop():
        with _host_sync_is_an_error():
            return loop()

    graph, static_out = capture_graph(checked_loop)

    def run():
        static_obs.copy_(obs)
        static_noise.copy_(noise)
        graph.replay()
        return static_out

    return run


def make_method(method: str, policy: DiffusionPolicy, obs, noise, n_steps: int, compile_mode: str):
    """A function that runs one ``sample()`` by ``method`` (see the module docstring)."""
    if method == "reference+graph":
        return _whole_loop_in_one_graph(policy, obs, noise, n_steps)
    if method == "compile+graph":
        return _whole_loop_in_one_graph(_CompiledDenoiser(policy, compile_mode), obs, noise, n_steps)
    if method in VARIANT_METHODS:
        backend, kwargs = VARIANT_METHODS[method]
        run = _sampler.resolve_backend(backend, policy)
        cond = policy._condition(obs)
        return lambda: run(policy, cond, noise, n_steps, None, **kwargs)  # as sample() calls it
    backend = "reference" if method == "reference" else method
    return lambda: policy.sample(obs, n_steps, noise=noise, backend=backend)


def default_methods() -> list[str]:
    """The three peers and every available dp_fast backend other than the reference."""
    return list(PEER_METHODS) + [b for b in _sampler.available_backends() if b != "reference"]


def known_methods() -> list[str]:
    return list(PEER_METHODS) + [b for b in _sampler.BACKENDS if b != "reference"] + list(VARIANT_METHODS)


# -- one run --------------------------------------------------------------------------------------


def _skip_reason(method: str, device: torch.device) -> str | None:
    if method in GPU_ONLY_METHODS and device.type != "cuda":
        return "needs a CUDA GPU"
    backend = VARIANT_METHODS[method][0] if method in VARIANT_METHODS else method
    if method not in PEER_METHODS and backend not in _sampler.available_backends():
        return "backend not available in this build"
    return None


def knob_settings() -> str:
    """The DP_FAST_ environment knobs this process runs under, as "K=V K=V" ("-": none)."""
    return " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("DP_FAST_")) or "-"


def captured_graphs(policy) -> list:
    """The CUDA graphs of ``policy``'s fast samplers (``dp_fast._fastpath``: one per backend,
    precision and (batch, steps)), in the order they were captured."""
    samplers = policy.__dict__.get("_fast_samplers", {}).values()
    return [cap.graph for s in samplers for cap in s._captures.values() if cap.graph is not None]


def replay_ms(graph, device: torch.device, replays: int = REPLAYS_PER_TIMING, timings: int = REPLAY_TIMINGS) -> float:
    """Median ms of one replay of ``graph`` alone: ``replays`` replays back to back between two
    CUDA events (so that the host's launch of one overlaps the GPU's run of the one before),
    ``timings`` times; on a CPU (tests: any object with ``replay()``) by perf_counter."""
    times_ms, _ = time_calls(lambda: [graph.replay() for _ in range(replays)], device, warmup=1, repeats=timings,
                             max_seconds=math.inf)
    return statistics.median(times_ms) / replays


def _measure_method(workload: Workload, method: str, policy, obs, noise, device, settings, reference_out) -> dict:
    row = dict(workload=workload.name, method=method, kind="peer" if method in PEER_METHODS else "backend")
    reason = _skip_reason(method, device)
    if reason:
        return dict(row, status="skipped", note=reason)
    try:
        graphs_before = {id(g) for g in captured_graphs(policy)}
        # the first call, with what the method does once before it (compilation, capture):
        # what a caller waits before the first action (policy.warmup does it ahead for the backends)
        started = time.perf_counter()
        fn = make_method(method, policy, obs, noise, workload.n_steps, settings["compile_mode"])
        fn()
        _synchronize(device)
        first_call_ms = (time.perf_counter() - started) * 1e3
        times_ms, out = time_calls(fn, device, settings["warmup"], settings["repeats"], settings["max_seconds"])
        out = out.detach().float().clone()
        # the graph this method captured, replayed alone (a fast backend on a GPU; the peers'
        # graphs live inside their methods and are not timed so)
        new = [g for g in captured_graphs(policy) if id(g) not in graphs_before]
        replay = replay_ms(new[0], device) if len(new) == 1 else None
    except NotImplementedError as e:  # a backend that does not support this configuration says so
        return dict(row, status="skipped", note=f"unsupported: {e}")
    except Exception as e:  # noqa: BLE001 - one failing method must not lose the others' numbers
        print(f"  {workload.name} {method} failed:\n{traceback.format_exc()}", file=sys.stderr)
        return dict(row, status="error", note=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    finally:
        fn = None  # frees a captured graph's memory pool before the next method
        if device.type == "cuda":
            torch.cuda.empty_cache()
    median_ms = statistics.median(times_ms)
    row.update(
        status="ok", note="", median_ms=median_ms, min_ms=min(times_ms), max_ms=max(times_ms),
        repeats=len(times_ms), times_ms=times_ms, us_per_eval=median_ms * 1e3 / workload.evaluations(),
        replay_us_per_eval=None if replay is None else replay * 1e3 / workload.evaluations(),
        first_call_ms=first_call_ms,
    )
    if workload.deterministic and reference_out is not None:
        row["max_abs_diff_vs_reference"] = (out - reference_out).abs().max().item()
    row["_output"] = out
    return row


def reference_output(workload: Workload, policy, obs, noise) -> torch.Tensor:
    """One untimed ``sample()`` by the eager reference on ``noise``: what the rows are checked
    against when the reference itself is not timed."""
    return make_method("reference", policy, obs, noise, workload.n_steps, "default")().detach().float().clone()


def run_workload(workload: Workload, methods: list[str], device: torch.device, dtype_name: str,
                 bandwidth: float, settings: dict) -> tuple[dict, list[dict]]:
    """Measures every method on one workload: (workload summary, rows)."""
    policy = workload.build_policy(device, DTYPES[dtype_name])
    obs, noise = workload.inputs(policy)
    n_bytes, n_tensors = weight_bytes(policy.model)
    evals = workload.evaluations()
    floor_us = n_bytes / bandwidth * 1e6
    summary = dict(workload.describe(), weight_bytes=n_bytes, weight_mb=n_bytes / MB, weight_tensors=n_tensors,
                   floor_us_per_eval=floor_us)
    rows, reference_out = [], None
    # the eager reference first: its output is what the other methods are compared with; where
    # it is not among the methods timed, one untimed call of it still gives every row its check
    ordered = sorted(methods, key=lambda m: m != "reference")
    if workload.deterministic and "reference" not in methods:
        reference_out = reference_output(workload, policy, obs, noise)
    for method in ordered:
        print(f"  {workload.name}: {method} ...", file=sys.stderr, flush=True)
        row = _measure_method(workload, method, policy, obs, noise, device, settings, reference_out)
        # each result as soon as it is known: a run cut short still leaves what it measured
        print(f"  {workload.name}: {method} {_fmt(row.get('us_per_eval'), '.1f')} us/eval "
              f"(max|diff| {_fmt(row.get('max_abs_diff_vs_reference'), '.1e')}) {row['status']}", file=sys.stderr, flush=True)
        out = row.pop("_output", None)
        if method == "reference":
            reference_out = out
        rows.append(row)
        if device.type == "cuda":
            torch._dynamo.reset()  # drops compiled code that holds the model

    peers = [r for r in rows if r["kind"] == "peer" and r["status"] == "ok"]
    strongest = min(peers, key=lambda r: r["median_ms"]) if peers else None
    summary.update(strongest_peer=strongest and strongest["method"], strongest_peer_ms=strongest and strongest["median_ms"])
    for r in rows:
        if r["status"] == "ok":
            r["speedup_vs_strongest_peer"] = strongest["median_ms"] / r["median_ms"] if strongest else None
            r["times_floor"] = r["us_per_eval"] / floor_us
        r.update(weight_mb=n_bytes / MB, evaluations=evals, floor_us_per_eval=floor_us)
    del policy, obs, noise
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return summary, rows


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_name()} ({torch.get_num_threads()} threads)"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "device"


def _git(*args: str) -> str | None:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        done = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
        return done.stdout.strip() if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def run_benchmark(workloads: list[str], methods: list[str], device, dtype_name: str = "fp32", *,
                  warmup: int = DEFAULT_WARMUP, repeats: int = DEFAULT_REPEATS,
                  max_seconds: float = MAX_SECONDS_PER_METHOD, compile_mode: str = COMPILE_MODE,
                  quick: bool = False) -> dict:
    """Runs the workloads (names from WORKLOADS) with the methods; returns the JSON-ready report."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    settings = dict(warmup=warmup, repeats=repeats, max_seconds=max_seconds, compile_mode=compile_mode)
    print(f"measuring bandwidth on {device} ...", file=sys.stderr, flush=True)
    bandwidth = measure_bandwidth(device)
    summaries, rows = [], []
    with torch.no_grad(), _tf32(dtype_name == "tf32"):
        for name in workloads:
            summary, workload_rows = run_workload(WORKLOADS[name], methods, device, dtype_name, bandwidth, settings)
            summaries.append(summary)
            rows.extend(workload_rows)
    commit = _git("rev-parse", "HEAD")
    return dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        device=dict(type=device.type, name=device_name(device)),
        torch_version=torch.__version__,
        cuda_version=torch.version.cuda,
        dp_fast_version=__version__,
        python_version=platform.python_version(),
        git_commit=commit,
        git_dirty=bool(_git("status", "--porcelain")) if commit else None,
        dtype=dtype_name,
        bandwidth_bytes_per_s=bandwidth,
        bandwidth_gb_per_s=bandwidth / GB,
        settings=dict(settings, quick=quick, cpu_threads=torch.get_num_threads(), methods=methods),
        available_backends=_sampler.available_backends(),
        workloads=summaries,
        rows=rows,
    )


# -- output ---------------------------------------------------------------------------------------


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _table(header: list[str], lines: list[list[str]], right: set[int]) -> str:
    widths = [max(len(x) for x in col) for col in zip(header, *lines)]

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(c) for c in lines])


def format_report(report: dict) -> str:
    """The report as plain aligned text: a header, the workloads, then one row per method."""
    head = (
        f"{report['device']['name']} | torch {report['torch_version']} (CUDA {report['cuda_version']}) | "
        f"dp_fast {report['dp_fast_version']} | {report['dtype']} | bandwidth {report['bandwidth_gb_per_s']:.1f} GB/s"
    )
    workloads = _table(
        ["workload", "network", "batch", "horizon", "sampler", "evals", "weights MB", "floor us/eval", "strongest peer"],
        [
            [w["name"], w["network"], str(w["batch"]), str(w["horizon"]), f"{w['sampler']} {w['n_steps']}",
             str(w["evaluations"]), f"{w['weight_mb']:.2f}", f"{w['floor_us_per_eval']:.1f}", w["strongest_peer"] or "-"]
            for w in report["workloads"]
        ],
        right={2, 3, 5, 6, 7},
    )
    rows = _table(
        ["workload", "method", "ms/sample", "us/eval", "replay", "vs peer", "x floor", "max|diff|", "first s", "note"],
        [
            [r["workload"], r["method"], _fmt(r.get("median_ms"), ".3f"), _fmt(r.get("us_per_eval"), ".1f"),
             _fmt(r.get("replay_us_per_eval"), ".1f"),
             _fmt(r.get("speedup_vs_strongest_peer"), ".2f") + ("x" if r.get("speedup_vs_strongest_peer") else ""),
             _fmt(r.get("times_floor"), ".1f"), _fmt(r.get("max_abs_diff_vs_reference"), ".1e"),
             _fmt(None if r.get("first_call_ms") is None else r["first_call_ms"] / 1e3, ".1f"),
             (r["status"] + ": " + r["note"])[:NOTE_WIDTH] if r["status"] != "ok" else ""]
            for r in report["rows"]
        ],
        right={2, 3, 4, 5, 6, 7, 8},
    )
    return f"{head}\n\n{workloads}\n\n{rows}"


def default_out_path(report: dict) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("bench", "results", f"{_slug(report['device']['name'])}-{stamp}.json")


def write_json(report: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")


# -- command line ---------------------------------------------------------------------------------


def _names(kind: str, known: list[str], text: str, groups: bool = False) -> list[str]:
    """Parses a comma-separated list of names; with ``groups``, "W2" means every "W2-*"."""
    if text == "all":
        return list(known)
    chosen, unknown = [], []
    for name in (n.strip() for n in text.split(",") if n.strip()):
        matches = [k for k in known if k == name or (groups and k.split("-")[0] == name)]
        if not matches:
            unknown.append(name)
        chosen += [m for m in matches if m not in chosen]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown {kind} {', '.join(map(repr, unknown)) or repr(text)}; choose from {', '.join(known)} (or 'all')")
    return chosen


def _workload_list(text: str) -> list[str]:
    return _names("workload", list(WORKLOADS), text, groups=True)


def _method_list(text: str) -> list[str]:
    return _names("method", known_methods(), text)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the benchmark's options to ``parser`` (the ``dp-fast bench`` CLI reuses them)."""
    parser.add_argument("--workloads", type=_workload_list, default=None,
                        help=f"comma-separated, from {', '.join(WORKLOADS)}; 'W2' means both W2 rows "
                             f"(default: all on a GPU, {','.join(QUICK_WORKLOADS)} with --quick)")
    parser.add_argument("--methods", type=_method_list, default=None,
                        help=f"comma-separated, from {', '.join(known_methods())} (default: the peers and every available backend)")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when there is a GPU)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32",
                        help="fp32 (strict, TF32 off), tf32 (fp32 weights, TF32 matmuls/convs) or bf16 weights and activations")
    parser.add_argument("--warmup", type=_non_negative_int, default=None,
                        help=f"untimed calls per method (default {DEFAULT_WARMUP}, {QUICK_WARMUP} with --quick)")
    parser.add_argument("--repeats", type=_positive_int, default=None,
                        help=f"timed calls per method (default {DEFAULT_REPEATS}, {QUICK_REPEATS} with --quick); "
                             f"fewer when a method has spent --max-seconds")
    parser.add_argument("--max-seconds", type=float, default=MAX_SECONDS_PER_METHOD,
                        help=f"stop timing a method after this many seconds, once it has {MIN_REPEATS} calls")
    parser.add_argument("--compile-mode", default=COMPILE_MODE, help="torch.compile mode of the compile+graph peer")
    parser.add_argument("--quick", action="store_true",
                        help="the reduced set: few workloads and repeats (automatic on a machine without a GPU)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/<device>-<date>.json)")
    parser.add_argument("--list", action="store_true", help="list the workloads and methods and exit")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Runs the benchmark that parsed ``args`` describe; 0 if no method failed, else 1."""
    if args.list:
        for w in WORKLOADS.values():
            print(f"{w.name:11s} {w.network}, batch {w.batch}, horizon {w.horizon}, {w.sampler} {w.n_steps} steps "
                  f"({w.evaluations()} evaluations)")
        print(f"methods: {', '.join(default_methods())} (and, when named: {', '.join(VARIANT_METHODS)})")
        return 0
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device} asked for a GPU, but torch sees no CUDA device; use --device cpu")
    quick = args.quick or device.type != "cuda"
    report = run_benchmark(
        args.workloads or list(QUICK_WORKLOADS if quick else WORKLOADS),
        args.methods or default_methods(),
        device,
        args.dtype,
        warmup=args.warmup if args.warmup is not None else (QUICK_WARMUP if quick else DEFAULT_WARMUP),
        repeats=args.repeats or (QUICK_REPEATS if quick else DEFAULT_REPEATS),
        max_seconds=args.max_seconds,
        compile_mode=args.compile_mode,
        quick=quick,
    )
    print(format_report(report))
    path = args.out or default_out_path(report)
    write_json(report, path)
    print(f"\nwrote {path}")
    return 1 if any(r["status"] == "error" for r in report["rows"]) else 0


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="dp-fast bench", description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except UsageError as e:
        parser.error(str(e))


if __name__ == "__main__":
    sys.exit(main())
