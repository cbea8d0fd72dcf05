"""bench/prebuilt.py: a prebuilt extension is used only where it was built from these sources,
for this torch and this Python (a mismatched one would load wrong kernels, or not at all)."""

import importlib.util
import json
import os
import re
import shutil

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("prebuilt", os.path.join(ROOT, "bench", "prebuilt.py"))
prebuilt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prebuilt)


def test_the_digest_covers_the_makefiles_build_inputs():
    makefile = open(os.path.join(ROOT, "Makefile")).read()
    line = re.search(r"^BUILD_INPUTS := (.*)$", makefile, re.M).group(1)
    assert set(line.replace("$(wildcard ", "").replace(")", "").split()) == set(prebuilt.INPUTS)


def _tree(root):
    """A copy of the build inputs (and one file that is not one) under root."""
    for rel in ("setup.py", "pyproject.toml", "README.md", "kernels/conv_block.cu", "csrc/conv_block_params.h"):
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        shutil.copy(os.path.join(ROOT, rel), os.path.join(root, rel))


def test_the_digest_moves_with_a_build_input_alone(tmp_path):
    _tree(tmp_path)
    before = prebuilt.inputs_digest(str(tmp_path))
    assert prebuilt.inputs_digest(str(tmp_path)) == before
    with open(tmp_path / "README.md", "a") as f:
        f.write("\nnot a build input\n")
    assert prebuilt.inputs_digest(str(tmp_path)) == before
    for rel in ("kernels/conv_block.cu", "csrc/conv_block_params.h"):
        with open(tmp_path / rel, "a") as f:
            f.write("\n// one more line\n")
        after = prebuilt.inputs_digest(str(tmp_path))
        assert after != before, rel
        before = after
    (tmp_path / "kernels" / "new.cuh").write_text("// a new header\n")
    assert prebuilt.inputs_digest(str(tmp_path)) != before


def _prebuilt(tmp_path, **change):
    """A stamped folder with a stand-in extension, stamped for here but for ``change``."""
    folder, into = tmp_path / "prebuilt", tmp_path / "pkg"
    folder.mkdir()
    into.mkdir()
    stamp = dict(prebuilt.expected(), **change)
    (folder / "stamp.json").write_text(json.dumps(stamp))
    (folder / prebuilt.extension_name()).write_bytes(b"stand-in")
    return ["use", "--dir", str(folder), "--into", str(into)], into


def test_a_matching_stamp_puts_the_extension_in_the_package(tmp_path, capsys):
    argv, into = _prebuilt(tmp_path)
    assert prebuilt.main(argv) == 0
    assert (into / prebuilt.extension_name()).read_bytes() == b"stand-in"
    assert torch.__version__ in capsys.readouterr().out


@pytest.mark.parametrize("change, said", [
    ({"inputs": "0" * 64}, "the build inputs"),
    ({"torch": "2.11.0+cu130" if torch.__version__ != "2.11.0+cu130" else "2.10.0+cu130"}, "torch differs"),
    ({"extension": "_C.cpython-310-x86_64-linux-gnu.so"}, "the Python differs"),
    ({"arch_list": "8.0"}, "TORCH_CUDA_ARCH_LIST differs"),
])
def test_a_stamp_for_anything_else_is_refused_by_name(tmp_path, capsys, change, said):
    argv, into = _prebuilt(tmp_path, **change)
    assert prebuilt.main(argv) == 1
    assert said in capsys.readouterr().out
    assert not list(into.iterdir())


def test_no_stamp_or_no_extension_is_refused(tmp_path, capsys):
    argv, into = _prebuilt(tmp_path)
    os.remove(os.path.join(argv[2], prebuilt.extension_name()))
    assert prebuilt.main(argv) == 1
    assert "is missing" in capsys.readouterr().out
    os.remove(os.path.join(argv[2], "stamp.json"))
    assert prebuilt.main(argv) == 1
    assert "no usable prebuilt extension" in capsys.readouterr().out
    assert not list(into.iterdir())
