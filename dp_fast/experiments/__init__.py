"""The lesson's four exercises and the demo as runnable experiments (``dp-fast exercise N``,
``dp-fast demo``).

Each module has ``run(*, out, device, seed, ..., progress) -> dict``: it trains on a toy task with a
tqdm bar, prints its answer as a table, writes ``<out>/<NAME>.png`` and ``<out>/<NAME>.json`` and
returns the JSON's content; ``QUICK`` holds a tiny configuration (seconds) for smoke tests.

=========  ==============  =========================================================
exercise   module          question
=========  ==============  =========================================================
1          ``multimodal``  BC vs Diffusion Policy on a task with two valid strategies
2          ``steps``       DDIM steps 5 ... 100: action quality against latency
3          ``chunk``       chunk size H in 4 ... 32: smoothness and closed-loop success
4          ``history``     observation history K in 1, 2, 4 on a task that needs velocity
demo       ``demo``        exercise 1's task, sampled with the fastest backend, timed
=========  ==============  =========================================================

``tasks`` holds the toy tasks and ``_common`` the training loop, rollout, timing and output helpers.
"""

from . import chunk, demo, history, multimodal, steps

EXERCISES = {1: multimodal, 2: steps, 3: chunk, 4: history}

__all__ = ["EXERCISES", "chunk", "demo", "history", "multimodal", "steps"]
