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

.PHONY: setup run test bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(if $(strip $(TORCH)),$(PY) -m pip install -q $(TORCH))
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# Main job: a small ablation sweep on the built-in synthetic benchmark, then its summary.
run: setup
	$(PY) -m collapse.train --config-dir sweeps --config-name quick hydra.sweep.dir=$(SWEEP_DIR); \
	status=$$?; $(PY) -m collapse.summary $(SWEEP_DIR) || status=1; exit $$status

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: setup
	$(PY) -m benchmarks

clean:
	rm -rf outputs multirun .pytest_cache
