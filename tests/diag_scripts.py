"""The scripts under bench/diag/ as modules, for the tests that check their arithmetic."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name: str):
    """bench/diag/<name>.py, imported as the module ``name``."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", "diag", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
