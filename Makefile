# Two commands from a fresh clone:  `make run` (set up + main job)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch comes first so that pyproject's permissive `torch>=2.1` is already satisfied.
# The default takes the CPU build (2.13.0 is on these machines' local wheel index);
# elsewhere set e.g. TORCH="torch --index-url https://download.pytorch.org/whl/cpu",
# or TORCH= to let uv pick torch from pyproject's range (a CUDA build from PyPI).
TORCH  ?= torch==2.13.0
SWEEP_DIR ?= outputs/sweeps/quick/$(shell date +%Y-%m-%d_%H-%M-%S)
# pytest workers: every core (pytest-xdist); TEST_WORKERS=0 runs in one process. A worker whose
# queue runs dry takes tests from the other's (--dist worksteal): with xdist's default split one
# worker sat idle for the last 16-18 s of the run, now both end within 2 s (suite 178 / 186 s and
# 177 / 185 s, alternated, 2 cores).
TEST_WORKERS ?= auto

.PHONY: setup setup-dev run test lint bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Python caches bytecode (__pycache__ in .venv and the checkout, git-ignored) for every command
# here, whatever PYTHONDONTWRITEBYTECODE says outside (CI and Docker images set it): without the
# cache every process compiles what it imports from source, ~3 s for torch alone.
unexport PYTHONDONTWRITEBYTECODE

# what running needs: the package and torch. torch is chosen by pip (`pip download` of TORCH:
# the machine's own wheel where pip is configured with one, its index and constraints) and
# installed by uv with everything else (from PyPI): uv unpacks in parallel, the ~150 packages of
# the dev extra in seconds where pip took a minute and a half. Later uv calls keep that torch.
# Nothing is byte-compiled at install (uv's --compile-bytecode compiled all 8,400 files, 19 s on
# 2 cores, where a run imports ~1,000 of them): the run path's imports are compiled once, here,
# and any other module the first time a command imports it.
UV := $(VENV)/bin/uv pip install --python $(PY) -q
WHEELS := $(VENV)/torch-wheel
$(VENV)/.installed-run: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q uv
	$(if $(strip $(TORCH)),rm -rf $(WHEELS) && $(PY) -m pip download -q --no-deps -d $(WHEELS) $(TORCH) \
		&& $(UV) $(WHEELS)/*.whl && rm -rf $(WHEELS))
	$(UV) -e .
	$(PY) -c "import torch, collapse.train, collapse.run.execute"
	touch $@

# what testing needs: the dev extra (tracking, optuna, statsmodels, pandas, linters, xdist)
$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed-run
	$(UV) -e ".[dev]"
	touch $@

setup: $(VENV)/.installed-run
setup-dev: $(VENV)/.installed-dev

# Main job: a small ablation sweep on the built-in synthetic benchmark, then its summary.
run: setup
	$(PY) -m collapse.train --config-dir sweeps --config-name quick hydra.sweep.dir=$(SWEEP_DIR); \
	status=$$?; $(PY) -m collapse.summary $(SWEEP_DIR) || status=1; exit $$status

lint: setup-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal

bench: setup-dev
	$(PY) -m benchmarks

clean:
	rm -rf outputs multirun .pytest_cache
