"""The CUDA kernels compiled for the H100 (sm_90) by nvcc on a machine without a GPU, and read
back as SASS: properties of the code the GPU will run that the CPU emulation's numbers cannot
show. Skips without nvcc (CUDA_HOME, or on PATH) or Triton's cuobjdump.

The chain's flagged exchange (kernels/conv_block.cu, stage_input_flagged) asks for every value of
a staged entry's input at once and looks at the flags afterwards: a branch on a loaded flag
between two loads would make each value its own L2 round trip (16-32 of them per block in W1,
where the exchange is meant to leave one). The first version did exactly that, correct in every
test; this reads the loads' order in the compiled chain kernels."""

import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool(name: str) -> str | None:
    if name == "nvcc":
        home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
        path = os.path.join(home, "bin", "nvcc")
        return path if os.path.exists(path) else shutil.which("nvcc")
    try:
        import triton
    except ImportError:
        return shutil.which(name)
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return path if os.path.exists(path) else shutil.which(name)


@pytest.fixture(scope="module")
def chain_sass(tmp_path_factory) -> dict[str, list[str]]:
    """The chain kernel's SASS instructions per weight dtype (float, bfloat16, double)."""
    nvcc, cuobjdump = _tool("nvcc"), _tool("cuobjdump")
    if nvcc is None or cuobjdump is None:
        pytest.skip("needs nvcc and cuobjdump")
    cubin = str(tmp_path_factory.mktemp("sm90") / "conv_block.cubin")
    build = subprocess.run([nvcc, "-std=c++17", "-O3", "-arch=sm_90", "-cubin", "-I", ROOT, "-o", cubin,
                            os.path.join(ROOT, "kernels", "conv_block.cu")], capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    dump = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, timeout=300)
    assert dump.returncode == 0, dump.stderr[-3000:]
    kernels = {}
    for function in re.split(r"\n\s+Function : ", dump.stdout)[1:]:
        name = function.split("\n", 1)[0]
        match = re.search(r"conv_block_chain_kernelI(f|13__nv_bfloat16|d)E", name)
        if match:
            kernels[{"f": "float", "13__nv_bfloat16": "bfloat16", "d": "double"}[match.group(1)]] = [
                m.group(1).strip() for m in re.finditer(r"/\*[0-9a-f]{4,}\*/\s+([^;]*);", function)]
    assert set(kernels) == {"float", "bfloat16", "double"}, list(kernels)
    return kernels


def _most_flag_loads_between_branches(instructions: list[str]) -> int:
    """The longest run of 64-bit strong loads (the flagged words: relaxed atomic loads at device
    scope) with no branch between them."""
    most = run = 0
    for ins in instructions:
        if re.search(r"\bBRA\b", ins):
            most, run = max(most, run), 0
        elif re.search(r"\bLDG?\.E\.64\.STRONG\.GPU\b", ins):
            run += 1
    return max(most, run)


@pytest.mark.parametrize("dtype", ["float", "bfloat16"])
def test_cuda_chain_kernel_asks_for_a_staged_input_at_once(chain_sass, dtype):
    """float32 and bfloat16 chain kernels: the flagged words of a staged entry's input are
    loaded without a branch between them, at least 32 in a row (W1's up-sampling entries take 32
    values a thread; the float32 activations' pass has 36 loads, the largest input's)."""
    assert _most_flag_loads_between_branches(chain_sass[dtype]) >= 32
