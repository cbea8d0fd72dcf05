"""``dp-fast``: help for every subcommand, clear argparse errors (exit 2) for bad arguments,
options reaching the experiment, and ``bench`` handed to dp_fast.benchmark."""

import functools
import json
import subprocess
import sys
import types

import pytest
import torch

import dp_fast
from dp_fast import cli
from dp_fast.experiments import EXERCISES, _common, chunk, history, multimodal, steps

HELP_CASES = {
    "top": ([], ["demo", "exercise", "bench", "info"]),
    "info": (["info"], ["--json", "bug report"]),
    "demo": (["demo"], ["--device", "--seed", "--out", "--quick", "--n-steps", "--repeats"]),
    "exercise": (["exercise"], ["multimodal", "steps", "chunk", "history"]),
    "exercise 1": (["exercise", "1"], ["--n-steps", "BC"]),
    "exercise 2": (["exercise", "2"], ["--n-steps", "--repeats", "evaluations"]),
    "exercise 3": (["exercise", "3"], ["--chunk-sizes", "--drift"]),
    "exercise 4": (["exercise", "4"], ["--histories", "n_obs_steps"]),
}


@pytest.mark.parametrize("case", HELP_CASES, ids=str)
def test_help_describes_each_subcommand(case, capsys):
    argv, expected = HELP_CASES[case]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in expected:
        assert word in text


@pytest.mark.parametrize("number", EXERCISES)
def test_exercise_names_are_aliases_of_numbers(number):
    parser = cli.build_parser()
    module = EXERCISES[number]
    assert parser.parse_args(["exercise", str(number)]).module is module
    assert parser.parse_args(["exercise", module.NAME]).module is module


BAD_ARGUMENTS = {
    "no command": ([], "required"),
    "unknown exercise": (["exercise", "5"], "invalid choice"),
    "odd chunk size": (["exercise", "3", "--chunk-sizes", "4", "5"], "even"),
    "one lesson step": (["exercise", "2", "--n-steps", "1"], "2 <= n_steps <= 100"),
    "too many lesson steps": (["exercise", "1", "--n-steps", "101"], "2 <= n_steps <= 100"),
    "zero history": (["exercise", "4", "--histories", "0"], "positive"),
    "long history": (["exercise", "history", "--histories", "1", "17"], "at most 16"),
    "zero training steps": (["demo", "--train-steps", "0"], "positive"),
    "not a number": (["demo", "--hidden", "big"], "integer"),
    "negative drift": (["exercise", "3", "--drift", "-1"], ">= 0"),
    "unknown device": (["demo", "--device", "tpu"], "'cpu', 'cuda'"),
    "unknown option": (["exercise", "chunk", "--bogus"], "unrecognized arguments: --bogus"),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS, ids=str)
def test_bad_arguments_exit_2_with_a_message_that_names_the_problem(case, capsys):
    argv, message = BAD_ARGUMENTS[case]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_device_without_a_gpu_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--device", "cuda"])
    assert exit_info.value.code == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def _record_run(module, monkeypatch) -> dict:
    """Replaces ``module.run`` by a stand-in with its signature that records its arguments."""
    seen = {}

    @functools.wraps(module.run)
    def fake_run(**options):
        seen.update(options)

    monkeypatch.setattr(module, "run", fake_run)
    return seen


@pytest.mark.parametrize("module", [multimodal, steps, chunk, history], ids=lambda m: m.NAME)
def test_options_reach_the_experiment_and_override_quick(module, monkeypatch, tmp_path):
    seen = _record_run(module, monkeypatch)
    number = next(n for n, m in EXERCISES.items() if m is module)
    assert cli.main(["exercise", str(number), "--quick", "--train-steps", "7", "--seed", "3",
                     "--out", str(tmp_path), "--no-progress"]) == 0
    assert seen["train_steps"] == 7 and seen["seed"] == 3  # explicit beats --quick
    assert seen["hidden"] == module.QUICK["hidden"]  # --quick fills the rest
    assert str(seen["out"]) == str(tmp_path) and seen["progress"] is False and seen["device"] == "cpu"


def test_default_output_directory_is_named_after_the_experiment(monkeypatch):
    seen = _record_run(chunk, monkeypatch)
    cli.main(["exercise", "chunk", "--chunk-sizes", "8", "16"])
    assert str(seen["out"]) == "out/chunk" and seen["chunk_sizes"] == [8, 16]
    assert "train_steps" not in seen  # the experiment's own default applies


def test_demo_runs_end_to_end_from_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_common, "available_backends", lambda: ["reference"])  # see test_experiments
    assert cli.main(["demo", "--quick", "--train-steps", "20", "--out", str(tmp_path), "--no-progress"]) == 0
    results = json.loads((tmp_path / "demo.json").read_text())
    assert results["config"]["train_steps"] == 20
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert "auto -> reference" in capsys.readouterr().out


def test_bench_forwards_every_argument_to_the_benchmark_module(monkeypatch):
    calls = []
    fake = types.ModuleType("dp_fast.benchmark")
    fake.main = lambda argv=None: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "dp_fast.benchmark", fake)
    monkeypatch.setattr(dp_fast, "benchmark", fake, raising=False)
    assert cli.main(["bench", "--workloads", "W1", "--help", "--seed", "1"]) == 0
    assert calls == [["--workloads", "W1", "--help", "--seed", "1"]]


def test_bench_without_a_working_benchmark_module_says_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "dp_fast.benchmark", None)  # makes the import fail
    monkeypatch.delattr(dp_fast, "benchmark", raising=False)
    assert cli.main(["bench"]) == 1
    assert "dp_fast.benchmark could not be imported" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "dp_fast", "exercise", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "multimodal" in done.stdout


def test_info_reports_the_installation_and_autos_choice_per_device(capsys):
    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dp_fast"] == dp_fast.__version__ and info["torch"] == torch.__version__
    assert info["backends"] == dp_fast.available_backends()
    assert info["extension"]["cuda_kernels"] == dp_fast._ext.cuda_compiled()
    devices = [d["device"] for d in info["devices"]]
    assert devices == ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    assert info["devices"][0]["auto"] == {"1": "reference", "64": "reference"}
    if torch.cuda.is_available() and dp_fast._ext.cuda_compiled():  # the GPU machine: its kernels have code for it
        assert info["devices"][1]["cuda_kernels"].startswith("sm_")
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert f"dp_fast     {dp_fast.__version__}" in text and "backends    " + ", ".join(info["backends"]) in text


def test_info_says_why_the_cuda_kernels_cannot_run_on_a_gpu():
    from dp_fast import info

    report = {"dp_fast": "0.1.0", "python": "3.12.0", "platform": "Linux", "torch": "2.11.0", "torch_cuda": "13.0",
              "triton": {"version": None, "why_not": "No module named 'triton'"},
              "extension": {"built": True, "cuda_kernels": True}, "backends": ["reference", "cuda"],
              "devices": [{"device": "cpu", "name": "x86_64", "auto": {"1": "reference", "64": "reference"}},
                          {"device": "cuda:0", "name": "NVIDIA GeForce RTX 5090", "compute_capability": "12.0", "sms": 170,
                           "memory_gib": 31.4, "auto": {"1": "cuda", "64": "reference"},
                           "cuda_kernels": "dp_fast's CUDA kernels have no code for cuda:0 (...)"}]}
    text = info.render(report)
    assert "triton      not installed (No module named 'triton')" in text
    assert "  cuda:0  NVIDIA GeForce RTX 5090, compute capability 12.0, 170 SMs, 31.4 GiB; auto: cuda at batch 1, reference at batch 64" in text
    assert "          CUDA kernels: dp_fast's CUDA kernels have no code for cuda:0" in text
