"""``DiffusionPolicy``: the lesson's policy class, made a drop-in that can also wrap Chi et al.'s
network with a diffusers-style scheduler, condition on an observation history, and sample
deterministically so that backends can be compared on the same noise."""

from __future__ import annotations

import operator
import time

import torch
import torch.nn.functional as F

from . import _fastpath, _sampler
from ._fastpath import check_precision
from .models import ConditionalUnet1D, LessonUNet1D
from .schedulers import DDIMScheduler, DDPMScheduler, LessonDDIMScheduler
from .schedulers._common import randn

_SCHEDULERS = (DDIMScheduler, DDPMScheduler, LessonDDIMScheduler)
_SIZES = ("action_dim", "obs_dim", "chunk_size", "n_obs_steps", "n_steps")
# The settings _check_config checks together: setting one after construction has them checked
# again before the next sample() or train_step() (not at once: a new model and its action_dim
# are set one after the other).
_CONFIG = frozenset(_SIZES + ("model", "scheduler", "eta", "precision"))


class DiffusionPolicy:
    """Predicts a chunk of ``chunk_size`` actions from the last ``n_obs_steps`` observations.

    With ``model=None`` it is the lesson's policy: a ``LessonUNet1D(action_dim, obs_dim *
    n_obs_steps, hidden, n_steps)`` sampled with the lesson's DDIM. Pass ``model`` (a
    ``LessonUNet1D`` or ``ConditionalUnet1D``) and ``scheduler`` (``DDIMScheduler``,
    ``DDPMScheduler`` or ``LessonDDIMScheduler``) to wrap a trained network; ``from_model``
    reads the dimensions off the network. ``eta`` is DDIM's noise weight (DDIMScheduler only).
    ``precision`` ("fp32", "tf32" or "bf16") applies to the fast backends; the reference always
    computes in the model's dtype.

    Observations are (B, obs_dim) when ``n_obs_steps == 1``, else (B, n_obs_steps, obs_dim),
    oldest first; actions are (B, chunk_size, action_dim).

    ``max_captures``: how many captures (one per batch size, step count, eta and chunk size) a
    fast backend's sampler keeps; beyond, the least recently used is dropped, with a warning
    the first time. Set it on the class or on one policy.
    """

    max_captures: int = 16

    def __init__(
        self,
        action_dim: int,
        obs_dim: int,
        chunk_size: int = 16,
        n_steps: int = 100,
        *,
        hidden: int = 256,
        n_obs_steps: int = 1,
        model: torch.nn.Module | None = None,
        scheduler=None,
        eta: float = 0.0,
        precision: str = "fp32",
        device: str | torch.device | None = None,
    ):
        self.action_dim, self.obs_dim = int(action_dim), int(obs_dim)
        self.chunk_size, self.n_obs_steps = int(chunk_size), int(n_obs_steps)
        self.n_steps = int(n_steps)
        if min(self.action_dim, self.obs_dim, self.chunk_size, self.n_obs_steps, self.n_steps) < 1:
            raise ValueError("action_dim, obs_dim, chunk_size, n_obs_steps and n_steps must all be >= 1")
        cond_dim = self.obs_dim * self.n_obs_steps
        self.model = model if model is not None else LessonUNet1D(action_dim, cond_dim, hidden, n_steps)
        self.scheduler = scheduler if scheduler is not None else LessonDDIMScheduler(n_steps)
        self.eta = float(eta)
        check_precision(precision)
        self.precision = precision
        self._check_config()
        if device is not None:
            self.to(device)

    def __getstate__(self) -> dict:
        """What a copy takes (``copy.copy``, ``copy.deepcopy``, pickle, ``torch.save``): all but
        the fast backends' samplers, which read this policy's network and hold its captures
        (CUDA graphs, which do not copy, over this policy's buffers); a copy builds its own on
        its first ``sample()``."""
        state = self.__dict__.copy()
        state.pop("_fast_samplers", None)
        state.pop("_first_kept", None)  # found anew for the copy's model
        return state

    @classmethod
    def from_model(cls, model, scheduler=None, *, chunk_size: int = 16, n_obs_steps: int = 1, eta: float = 0.0, precision: str = "fp32"):
        """Wraps a trained network, taking action_dim, obs_dim and n_steps from it and the scheduler."""
        if isinstance(model, LessonUNet1D):
            action_dim, cond_dim = model.action_dim, model.obs_dim
            scheduler = scheduler if scheduler is not None else LessonDDIMScheduler(model.diffusion_steps)
        elif isinstance(model, ConditionalUnet1D):
            action_dim, cond_dim = model.final_conv[1].out_channels, _global_cond_dim(model)
            if scheduler is None:
                raise ValueError("from_model(ConditionalUnet1D) needs the scheduler it was trained with")
        else:
            raise TypeError(_not_a_network(model))
        if cond_dim % n_obs_steps:
            raise ValueError(f"the network's condition width {cond_dim} is not divisible by n_obs_steps={n_obs_steps}")
        return cls(
            action_dim,
            cond_dim // n_obs_steps,
            chunk_size,
            getattr(scheduler, "num_train_timesteps", 100),
            n_obs_steps=n_obs_steps,
            model=model,
            scheduler=scheduler,
            eta=eta,
            precision=precision,
        )

    def __setattr__(self, name: str, value) -> None:
        object.__setattr__(self, name, value)
        if name in _CONFIG:
            self.__dict__["_config_checked"] = False

    def _checked(self) -> None:
        """Checks the settings again (``_check_config``) if one was set since they were last
        checked: a chunk size the network cannot take, say, set after construction. The
        scheduler's step count is compared on every call, since it is set on the scheduler (a
        schedule past the lesson network's table of steps failed on the GPU with a device-side
        assert, which ends the process's use of CUDA)."""
        if not self.__dict__.get("_config_checked") or self.scheduler.num_train_timesteps != self.n_steps:
            self._check_config()

    def _check_config(self) -> None:
        for name in _SIZES:
            value = getattr(self, name)
            if isinstance(value, bool) or not _is_index(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)) or not 0.0 <= self.eta < float("inf"):
            raise ValueError(f"eta must be a finite float >= 0, got {self.eta!r}")
        check_precision(self.precision)
        cond_dim = self.obs_dim * self.n_obs_steps
        if not isinstance(self.scheduler, _SCHEDULERS):
            raise TypeError(f"scheduler must be one of {[c.__name__ for c in _SCHEDULERS]}, got {type(self.scheduler).__name__}")
        if self.scheduler.num_train_timesteps != self.n_steps:
            raise ValueError(
                f"n_steps={self.n_steps} must equal scheduler.num_train_timesteps={self.scheduler.num_train_timesteps}"
            )
        if self.eta != 0.0 and not isinstance(self.scheduler, DDIMScheduler):
            raise ValueError(f"eta applies to DDIMScheduler only, not {type(self.scheduler).__name__}")
        if isinstance(self.model, LessonUNet1D):
            expected = dict(action_dim=self.action_dim, obs_dim=cond_dim, diffusion_steps=self.n_steps)
            actual = dict(action_dim=self.model.action_dim, obs_dim=self.model.obs_dim, diffusion_steps=self.model.diffusion_steps)
            divisor = 2
        elif isinstance(self.model, ConditionalUnet1D):
            expected = dict(action_dim=self.action_dim, global_cond_dim=cond_dim)
            actual = dict(action_dim=self.model.final_conv[1].out_channels, global_cond_dim=_global_cond_dim(self.model))
            divisor = 2 ** (len(self.model.down_modules) - 1)
        else:
            raise TypeError(_not_a_network(self.model))
        if expected != actual:
            raise ValueError(f"the network does not fit this policy: policy expects {expected}, network has {actual}")
        if self.chunk_size % divisor:
            raise ValueError(f"chunk_size must be divisible by {divisor} for this network, got {self.chunk_size}")
        self.__dict__["_config_checked"] = True

    @property
    def step_kwargs(self) -> dict:
        """What the scheduler's step (and its coefficient table) takes beyond the sample: DDIM's eta."""
        return {"eta": self.eta} if self.eta else {}

    # -- device ---------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self._parameter().device

    @property
    def dtype(self) -> torch.dtype:
        return self._parameter().dtype

    def _parameter(self) -> torch.nn.Parameter:
        """The model's first parameter (``_first_parameter``), which gives the policy its device
        and dtype. Where it is (its module and name) is kept until another model is set or a
        module or parameter is registered anywhere (``_fastpath._registrations``); the parameter
        itself is read from its module's table on every call, so a conversion that puts new
        parameters there (``module.to()`` with PyTorch's overwrite-on-conversion switch on)
        counts. A ``sample()`` asks about seven times: 1.2-1.6 µs each found anew on this
        project's CPU machine, a third of that kept."""
        model, kept = self.model, self.__dict__.get("_first_kept")
        if kept is None or kept[0] is not model or kept[1] != _fastpath._registrations:
            kept = self._first_kept = (model, _fastpath._registrations, *_first_slot(model))
        p = kept[2]._parameters.get(kept[3])
        return p if p is not None else _first_parameter(model)  # set to None by hand: found anew

    def to(self, *args, **kwargs) -> "DiffusionPolicy":
        """Moves the model (``model.to``'s arguments: a device, a dtype, or both); the fast
        samplers made for where it was are dropped with the memory they held."""
        self.model.to(*args, **kwargs)
        _fastpath.drop_stale_samplers(self)
        return self

    def release_fast_path(self) -> None:
        """Drops every fast sampler of this policy, with what it holds: packed weights (bf16's
        copy, the transposed convolutions' layout) and captures (CUDA graphs and their buffers).
        The next ``sample()`` on a fast backend builds and captures anew, as the first did
        (``warmup`` does it ahead). For a long training phase between evaluations, say;
        ``torch.cuda.empty_cache()`` then returns the memory to the device."""
        with _fastpath._DeviceOrder.of(self.device):  # not while another thread's call uses them
            self.__dict__.pop("_fast_samplers", None)

    # -- training ---------------------------------------------------------------------------

    def train_step(self, obs: torch.Tensor, actions: torch.Tensor, optimizer: torch.optim.Optimizer) -> float:
        """One denoising-loss step on a batch; returns the loss. actions: (B, chunk_size, action_dim)."""
        self._checked()
        cond = self._condition(obs, finite=False)
        self._check_actions(actions, cond.shape[0], finite=False)
        _check_finite(("obs", obs), ("actions", actions))
        B = actions.shape[0]
        k = torch.randint(0, self.n_steps, (B,)).to(actions.device)
        noise = torch.randn_like(actions)
        noisy = self.scheduler.add_noise(actions, noise, k)
        target = self._training_target(actions, noise, k)
        loss = F.mse_loss(self.denoise(noisy, k, cond), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    def _training_target(self, actions, noise, k):
        kind = self.scheduler.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "sample":
            return actions
        ab = self.scheduler.alphas_cumprod.to(actions.device, actions.dtype)[k].view(-1, 1, 1)
        return ab.sqrt() * noise - (1 - ab).sqrt() * actions  # v_prediction

    # -- sampling ---------------------------------------------------------------------------

    def denoise(self, x: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """One network evaluation: x (B, H, A), timestep (B,) int64, cond (B, n_obs_steps * obs_dim)."""
        if isinstance(self.model, LessonUNet1D):
            return self.model(x, timestep, cond)
        return self.model(x, timestep, global_cond=cond)

    @torch.no_grad()
    def sample(
        self,
        obs: torch.Tensor,
        n_steps: int = 20,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        backend: str = "auto",
    ) -> torch.Tensor:
        """Denoises a chunk of actions; returns (B, chunk_size, action_dim) on ``obs``'s device.

        n_steps: inference steps (for the lesson's sampler, points of its linspace).
        noise: the initial noise, (B, chunk_size, action_dim); drawn from ``generator`` (or the
        global RNG) when None. DDPM and DDIM with eta > 0 draw their step noise from ``generator``.
        backend: "auto", "reference", "triton" or "cuda" (see ``dp_fast.available_backends``).
        """
        self._checked()
        n_steps = _steps(n_steps)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        cond = self._condition(obs, finite=False)
        if cond.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                "sample() cannot run inside a CUDA graph capture: its input check waits for its verdict on the "
                "host, and a fast backend replays a graph of its own (the whole loop in one launch); call it outside"
            )
        B = cond.shape[0]
        shape = (B, self.chunk_size, self.action_dim)
        if noise is None:
            noise = randn(shape, generator, obs.device, self.dtype)
            check = _FiniteCheck(("obs", obs))
        else:
            self._check_actions(noise, B, name="noise", finite=False)
            check = _FiniteCheck(("obs", obs), ("noise", noise))
        if not check.deferred:
            check.wait()  # on the CPU: before any work
        run = _sampler.resolve_backend(backend, self, batch=B)
        actions = run(self, cond, noise, n_steps, generator)  # no backend writes its x: no copy
        check.wait()  # on a GPU: once the work is queued behind the check (see _FiniteCheck)
        return actions

    @torch.no_grad()
    def warmup(self, batch_size: int = 1, n_steps: int = 20, backend: str = "auto") -> float:
        """Makes the first ``sample()`` of ``batch_size`` samples in ``n_steps`` steps by
        ``backend`` as fast as the ones after it; call it before a control loop starts. It is
        one ``sample()`` on zero observations and noise, which builds the fast backend's sampler
        (the packed weights), compiles its kernels (Triton's: once per machine, then from its
        cache on disk) and, on a GPU, captures the loop's CUDA graph, the work of the first call
        that the calls after it do not repeat. Its step noise comes from a generator of its own:
        the global RNG is not drawn from. Returns the seconds it took, its GPU work done."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        device, dtype = self.device, self.dtype
        obs_shape = (batch_size, self.obs_dim) if self.n_obs_steps == 1 else (batch_size, self.n_obs_steps, self.obs_dim)
        started = time.perf_counter()
        obs = torch.zeros(obs_shape, device=device, dtype=dtype)
        noise = torch.zeros(batch_size, self.chunk_size, self.action_dim, device=device, dtype=dtype)
        self.sample(obs, n_steps, noise=noise, generator=torch.Generator().manual_seed(0), backend=backend)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    # -- input checks ---------------------------------------------------------------------------

    def _condition(self, obs: torch.Tensor, finite: bool = True) -> torch.Tensor:
        """Checks obs (its values too unless ``finite`` is False: the caller checks them with
        others, ``_check_finite``) and flattens its history: -> (B, n_obs_steps * obs_dim)."""
        if not torch.is_tensor(obs):
            raise TypeError(f"obs must be a torch.Tensor, got {type(obs).__name__}")
        expected = "(B, obs_dim)" if self.n_obs_steps == 1 else "(B, n_obs_steps, obs_dim)"
        want = (self.obs_dim,) if self.n_obs_steps == 1 else (self.n_obs_steps, self.obs_dim)
        if obs.dim() != len(want) + 1 or tuple(obs.shape[1:]) != want or obs.shape[0] < 1:
            at_least = " with B >= 1" if obs.dim() == len(want) + 1 and tuple(obs.shape[1:]) == want else ""
            raise ValueError(f"obs must be shaped {expected} = (B, {', '.join(map(str, want))}){at_least}, got {tuple(obs.shape)}")
        self._check_tensor(obs, "obs", finite)
        return obs.reshape(obs.shape[0], -1)

    def _check_actions(self, actions, B, name="actions", finite: bool = True) -> None:
        want = (B, self.chunk_size, self.action_dim)
        if not torch.is_tensor(actions) or tuple(actions.shape) != want:
            got = tuple(actions.shape) if torch.is_tensor(actions) else type(actions).__name__
            raise ValueError(f"{name} must be shaped (B, chunk_size, action_dim) = {want}, got {got}")
        self._check_tensor(actions, name, finite)

    def _check_tensor(self, t: torch.Tensor, name: str, finite: bool = True) -> None:
        if t.dtype != self.dtype:
            raise TypeError(f"{name} must be {self.dtype} (the model's dtype), got {t.dtype}")
        if t.device != self.device:
            raise ValueError(f"{name} is on {t.device} but the model is on {self.device}; use policy.to(device)")
        if finite:
            _check_finite((name, t))


def _not_a_network(model) -> str:
    """The error for a model that is neither network; for a wrapper of one (``torch.compile``'s
    module, ``AveragedModel``, ``DataParallel``, DDP), which attribute holds the network."""
    message = f"model must be a LessonUNet1D or ConditionalUnet1D, got {type(model).__name__}"
    inner = next((a for a in ("_orig_mod", "module") if isinstance(getattr(model, a, None), (LessonUNet1D, ConditionalUnet1D))), None)
    if inner is not None:
        message += f"; pass the network it wraps (model.{inner}), whose parameters it shares"
    return message


class _FiniteCheck:
    """NaN or Inf in any of the (name, tensor) pairs is an error naming the first such tensor,
    raised by ``wait()``. One reduction over all of them and one verdict for the host. On a CUDA
    device the verdict reaches the host by a non-blocking copy behind an event (``deferred``), so
    the caller can queue its own work before it waits: ``sample()`` queues the sampler's graph
    behind the check, where a synchronisation before it would keep the GPU idle for a round trip
    to the host and the launches after it. Work done on bad input is discarded (its result is
    not returned; a capture's buffers carry nothing from one call to the next). Elsewhere the
    verdict is there at once."""

    def __init__(self, *named: tuple[str, torch.Tensor]):
        self.named = named
        flat = [t.reshape(-1) for _, t in named]
        ok = torch.isfinite(flat[0] if len(flat) == 1 else torch.cat(flat)).all()
        device = ok.device
        self.deferred = device.type == "cuda"
        self._done = None
        if self.deferred:
            ok = ok.to("cpu", non_blocking=True)  # into pinned memory: the copy is queued, not waited
            self._done = torch.cuda.Event()
            self._done.record(torch.cuda.current_stream(device))
        self._ok = ok

    def wait(self) -> None:
        if self._done is not None:
            self._done.synchronize()
        if not bool(self._ok):
            bad = next(name for name, t in self.named if not torch.isfinite(t).all())  # the error's path only
            raise ValueError(f"{bad} contains NaN or Inf")


def _is_index(value) -> bool:
    """An int, or a NumPy integer: anything ``operator.index`` takes."""
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _steps(n_steps) -> int:
    """n_steps as an int: an int (or a NumPy integer, anything ``operator.index`` takes), not a
    bool, a float (2.5 ran 2 steps) or a string."""
    if isinstance(n_steps, bool):
        raise TypeError("n_steps must be an int, got a bool")
    try:
        return operator.index(n_steps)
    except TypeError:
        raise TypeError(f"n_steps must be an int, got {type(n_steps).__name__} {n_steps!r}") from None


def _check_finite(*named: tuple[str, torch.Tensor]) -> None:
    """``_FiniteCheck`` waited on at once (one host synchronisation on a GPU)."""
    _FiniteCheck(*named).wait()


def _first_parameter(model: torch.nn.Module) -> torch.nn.Parameter:
    """``next(model.parameters())``, found without its generators: a ``sample()`` call asks for
    the model's device and dtype about seven times, 4-6 µs each through ``parameters()`` on
    this project's CPU machine for either network (0.8-1.3 this way). The same parameter: the
    first of the first module, in preorder, that has one."""
    module, name = _first_slot(model)
    return module._parameters[name]


def _first_slot(model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """Where ``_first_parameter`` is: (its module, its name in the module's table)."""
    stack = [model]
    while stack:
        module = stack.pop()
        if module is None:  # a submodule registered as None
            continue
        for name, p in module._parameters.items():
            if p is not None:
                return module, name
        stack += reversed(module._modules.values())
    raise ValueError(f"the model ({type(model).__name__}) has no parameters")


def _global_cond_dim(model: ConditionalUnet1D) -> int:
    dsed = model.diffusion_step_encoder[0].dim
    return model.mid_modules[0].cond_encoder[1].in_features - dsed
