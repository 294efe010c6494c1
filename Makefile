# The README's two commands: `make demo` (the main job) and `make test` (what CI runs).
# Each creates .venv if missing and installs what it needs; torch is pinned by constraints.txt
# for this project's own setup only (the package itself accepts torch>=2.4).

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: demo test lint venv clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,recipes,deepspeed]"
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python recipes/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --durations=10

clean:
	rm -rf $(VENV) outputs .pytest_cache
