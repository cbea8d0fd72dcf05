import os
import sys

import torch

# tests import the lesson's verbatim code (lesson_original.py) from this folder
sys.path.insert(0, os.path.dirname(__file__))

# Without a GPU the Triton kernels run in Triton's CPU interpreter; it is chosen when the kernels
# are defined, so before any test imports dp_fast.triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _no_tf32_in_the_reference():
    """On a GPU, PyTorch runs float32 convolutions in TF32 by default (cudnn.allow_tf32), which
    would make the float32 reference itself off by ~1e-3; the bounds of SPEC.md are against a
    float32 reference. Restored after each test."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture
def sample_events(monkeypatch):
    """What a ``sample()`` call does, in order: the names handed to its NaN/Inf check
    (``_FiniteCheck``), "run" when it resolves its backend and "wait" when it waits on the check."""
    import dp_fast._sampler as sampler_module
    import dp_fast.policy as policy_module

    events = []

    class Recording(policy_module._FiniteCheck):
        def __init__(self, *named):
            events.append([name for name, _ in named])
            super().__init__(*named)

        def wait(self):
            events.append("wait")
            super().wait()

    resolve = sampler_module.resolve_backend

    def resolving(*args, **kwargs):
        events.append("run")
        return resolve(*args, **kwargs)

    monkeypatch.setattr(policy_module, "_FiniteCheck", Recording)
    monkeypatch.setattr(sampler_module, "resolve_backend", resolving)
    return events
