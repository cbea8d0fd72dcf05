"""``dp-fast``: the demo, the lesson's exercises, and the benchmarks.

    dp-fast demo                      train a small policy (< 1 min on a CPU), sample, time backends
    dp-fast exercise 1|multimodal     BC vs Diffusion Policy on a two-mode task
    dp-fast exercise 2|steps          DDIM steps vs action quality and latency
    dp-fast exercise 3|chunk          chunk size vs smoothness and success
    dp-fast exercise 4|history        observation history vs tracking error
    dp-fast bench ...                 the benchmark suite (dp_fast.benchmark; see dp-fast bench --help)
    dp-fast info [--json]             versions, the extension, the backends and auto's choice per device
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import torch

MAX_HISTORY = 16
EPILOG = "Each experiment writes a PNG plot and a JSON file to --out and prints its answer as a table."


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _even_positive_int(text: str) -> int:
    value = _positive_int(text)
    if value % 2:
        raise argparse.ArgumentTypeError(f"chunk sizes must be even (the lesson's U-Net halves the horizon), got {value}")
    return value


def _lesson_n_steps(text: str) -> int:
    value = _int(text)
    if not 2 <= value <= 100:
        raise argparse.ArgumentTypeError(
            f"the lesson's sampler takes 2 <= n_steps <= 100 (n points, n - 1 network evaluations), got {value}")
    return value


def _ddim_n_steps(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"DDIM takes 1 <= n_steps <= 100 network evaluations, got {value}")
    return value


def _history(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_HISTORY:
        raise argparse.ArgumentTypeError(f"history lengths must be at most {MAX_HISTORY} (the episodes are short), got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _device(text: str) -> str:
    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} asked for, but no CUDA GPU is available (use cpu or auto)")
    return text


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("common options")
    g.add_argument("--device", type=_device, default="cpu",
                   help="cpu (default), cuda, cuda:N, or auto (cuda if available, else cpu)")
    g.add_argument("--seed", type=int, default=0, help="seeds data, training and sampling (default 0)")
    g.add_argument("--out", type=Path, help="output directory for the PNG and JSON (default out/<name>)")
    g.add_argument("--quick", action="store_true",
                   help="a tiny configuration that runs in seconds: checks the pipeline, not the answer")
    g.add_argument("--train-steps", type=_positive_int, help="optimizer steps per trained policy")
    g.add_argument("--hidden", type=_positive_int, help="hidden width of the LessonUNet1D")
    g.add_argument("--n-demos", type=_positive_int, help="number of demonstrations (episodes)")
    g.add_argument("--n-eval", type=_positive_int, help="number of evaluation samples or episodes")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return common


def _add_specific_options(name: str, parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(f"{name} options")
    if name in ("multimodal", "demo"):
        g.add_argument("--n-steps", type=_lesson_n_steps,
                       help="lesson DDIM n_steps: n points of linspace(99, 0, n), n - 1 network evaluations")
    if name == "steps":
        g.add_argument("--n-steps", type=_lesson_n_steps, nargs="+", metavar="N",
                       help="lesson DDIM n_steps to compare (default 5 10 20 50 100; n - 1 network evaluations)")
    if name in ("steps", "demo"):
        g.add_argument("--repeats", type=_positive_int, help="timed sample() calls per measurement (median)")
    if name == "chunk":
        g.add_argument("--chunk-sizes", type=_even_positive_int, nargs="+", metavar="H",
                       help="chunk sizes to compare (default 4 8 16 32; even)")
        g.add_argument("--drift", type=_non_negative_float,
                       help="largest unobserved drift per step in the rollouts (default 0.01)")
    if name == "history":
        g.add_argument("--histories", type=_history, nargs="+", metavar="K",
                       help="observation history lengths to compare (default 1 2 4)")
    if name in ("chunk", "history"):
        g.add_argument("--n-steps", type=_ddim_n_steps, help="DDIM network evaluations per sample (default 10)")


def build_parser() -> argparse.ArgumentParser:
    from . import info
    from .experiments import EXERCISES, demo

    parser = argparse.ArgumentParser(
        prog="dp-fast",
        description="Diffusion Policy with a fast sample(): the demo, the lesson's exercises, the benchmarks.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,exercise,bench,info}")
    common = _common_options()

    p = sub.add_parser("demo", parents=[common], help="train a small policy (< 1 min on a CPU), sample, time backends",
                       description=demo.__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_specific_options("demo", p)
    p.set_defaults(module=demo)

    ex = sub.add_parser("exercise", help="run one of the lesson's exercises (1-4)",
                        description="The lesson's exercises: "
                                    + "; ".join(f"{n} ({m.NAME}): {m.TITLE.split(': ', 1)[1]}" for n, m in EXERCISES.items()),
                        epilog="Run 'dp-fast exercise N --help' for one exercise's options.")
    ex_sub = ex.add_subparsers(dest="exercise", required=True, metavar="{1,2,3,4}",
                               title="exercises (number or name)")
    for number, module in EXERCISES.items():
        p = ex_sub.add_parser(str(number), aliases=[module.NAME], parents=[common], help=module.TITLE.split(": ", 1)[1],
                              description=module.__doc__, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_specific_options(module.NAME, p)
        p.set_defaults(module=module)

    sub.add_parser("bench", add_help=False,
                   help="the benchmark suite (dp_fast.benchmark); all arguments go to it, see 'dp-fast bench --help'")
    p = sub.add_parser("info", help="versions, the extension, the backends and what auto picks on each device "
                                    "(for a bug report)", description=info.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _run_experiment(args: argparse.Namespace) -> int:
    module = args.module
    accepted = inspect.signature(module.run).parameters
    given = {k: v for k, v in vars(args).items() if k in accepted and v is not None}
    options = {**(module.QUICK if args.quick else {}), **given}
    options["out"] = args.out if args.out is not None else Path("out") / module.NAME
    options["progress"] = not args.no_progress
    module.run(**options)
    return 0


def _run_bench(argv: list[str]) -> int:
    try:
        from . import benchmark
    except Exception as err:  # missing or broken: say what and why rather than a traceback
        print(f"dp-fast bench: the benchmark module dp_fast.benchmark could not be imported "
              f"({type(err).__name__}: {err})", file=sys.stderr)
        return 1
    return int(benchmark.main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dp-fast`` and ``python -m dp_fast``; returns the exit status."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        return _run_bench(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "info":
        from . import info

        return info.main(["--json"] if args.json else [])
    return _run_experiment(args)


if __name__ == "__main__":
    sys.exit(main())
