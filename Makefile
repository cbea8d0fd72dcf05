# Quick start: `make demo` runs the main job, `make test` the tests. Both create .venv and
# install dp_fast there (torch first, then the package with its compiled extension) if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MAX_JOBS ?= 2
BUILD_INPUTS := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h kernels/*.cu kernels/*.cuh kernels/*.h)

.PHONY: install demo test bench ctest clean

install: $(VENV)/.installed

$(VENV)/.installed: $(BUILD_INPUTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch setuptools wheel ninja pybind11 numpy
	MAX_JOBS=$(MAX_JOBS) $(PY) -m pip install --no-build-isolation -e ".[test]"
	touch $@

demo: install
	$(VENV)/bin/dp-fast demo

test: install
	$(PY) -m pytest -q

bench: install
	$(VENV)/bin/dp-fast bench

# The CMake build of the same sources, with the C++ tests (ctest).
ctest: install
	cmake -S . -B cmake-build -DPython3_EXECUTABLE=$(abspath $(PY)) -DCMAKE_BUILD_TYPE=Release
	cmake --build cmake-build -j $(MAX_JOBS)
	ctest --test-dir cmake-build --output-on-failure

clean:
	rm -rf $(VENV) build cmake-build dp_fast/_C*.so
