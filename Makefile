# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create .venv on first use with the CPU build of PyTorch pinned.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet "$(TORCH)"
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $@

.PHONY: setup test test-fast demo
setup: $(VENV)/.installed

test: setup
	$(VENV)/bin/python -m pytest

# the quick loop: no trainings, compiles, browser or real data (see the markers in pyproject.toml)
test-fast: setup
	$(VENV)/bin/python -m pytest -m "not slow and not compile and not browser and not data"

demo: setup
	$(VENV)/bin/cgnet demo --out demo
