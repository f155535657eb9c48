# The two commands: `make demo` (the main job on a fresh machine) and `make test` (the suite CI runs).
# Both bootstrap ./.venv by themselves. torch is installed first and pinned so that a CPU-only host
# takes the CPU build that lies on disk instead of a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean gpu-check

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kernelmap demo

# Two processes, a test file each at a time (the two CPUs are busy throughout); the 40 slowest
# tests are listed at the end, for whoever trims the suite.
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2 --dist loadfile --durations=40

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# On a GPU host, whose system Python has torch, triton, cupy, numpy and httpx (no venv: this target
# does not bootstrap one). Install the wheels of bench/wheels.txt first (its comments say how to
# download them):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# Writes at most 8 JSON files to $(OUT) (default gpu-check-out) and prints one table; at most 8 min.
GPU_PY ?= python3
gpu-check:
	$(GPU_PY) bench/gpu_check.py $(or $(OUT),gpu-check-out)

clean:
	rm -rf $(VENV) .pytest_cache
