# Two commands from a fresh clone:  `make run` (set up + main job)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch comes first so that pyproject's permissive `torch>=2.1` is already satisfied.
# The default takes the CPU build (2.13.0 is on these machines' local wheel index);
# elsewhere set e.g. TORCH="torch --index-url https://download.pytorch.org/whl/cpu",
# or TORCH= to let pip pick torch from pyproject's range.
TORCH  ?= torch==2.13.0
SWEEP_DIR ?= outputs/sweeps/quick/$(shell date +%Y-%m-%d_%H-%M-%S)
# pytest workers: every core (pytest-xdist); TEST_WORKERS=0 runs in one process
TEST_WORKERS ?= auto

.PHONY: setup setup-dev run test lint bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# what running needs: the package and torch. torch through pip (the machine's own wheel,
# see TORCH); the rest through uv (from PyPI, through pip): the ~150 packages of the dev
# extra take it seconds where pip took a minute and a half. uv keeps the torch installed here.
# --compile-bytecode: uv does not byte-compile by default, and where PYTHONDONTWRITEBYTECODE is set
# (CI and Docker images) Python never caches what it compiles: every process then compiled numpy,
# hydra, omegaconf (and a test worker scipy, sklearn, pandas) from source, ~0.3-2.5 s each time.
UV := $(VENV)/bin/uv pip install --python $(PY) -q --compile-bytecode
# torch's ~2,000 modules: pip byte-compiles them one at a time; compiled here on every core
# instead (the torch step, alternated pairs on 2 cores: 23-26 s against 28-36 s). As pip does,
# a file that does not compile is skipped (torch ships one in Python 3.12 syntax, for its tests).
COMPILE := $(PY) -c "import compileall, sysconfig; p = sysconfig.get_paths(); \
	[compileall.compile_dir(d, quiet=2, workers=0) for d in {p['purelib'], p['platlib']}]"
$(VENV)/.installed-run: pyproject.toml | $(VENV)/bin/python
	$(if $(strip $(TORCH)),$(PY) -m pip install -q --no-compile $(TORCH) && $(COMPILE))
	$(PY) -m pip install -q uv
	$(UV) -e .
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
	$(PY) -m pytest -n $(TEST_WORKERS)

bench: setup-dev
	$(PY) -m benchmarks

clean:
	rm -rf outputs multirun .pytest_cache
