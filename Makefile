# The README's two commands: `make demo` (the main job) and `make test` (what CI runs).
# Each creates .venv if missing and installs what it needs; torch is pinned by constraints.txt
# for this project's own setup only (the package itself accepts torch>=2.6).

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: demo test lint venv clean compat

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

# Two workers, one test module each at a time (a module's fixtures are built once); one thread each, as the
# machine has two cores (the distributed tests start their own two processes).
test: $(STAMP) lint
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=10

clean:
	rm -rf $(VENV) outputs .pytest_cache

# `make compat` (outside CI): a fast subset (optimizer contract, Trainer parity, depths, private-name guards,
# census sample, Hub pushes) against the lowest supported and the newest transformers/accelerate, each in its
# own venv under .venv-compat/ (created once per pin set; torch stays 2.13.0, the one on disk).
COMPAT_LOW   ?= transformers==5.12.1 accelerate==1.16.0
COMPAT_HIGH  ?= transformers==5.25.0 accelerate==1.16.0
COMPAT_TESTS ?= tests/test_optim_contract.py tests/test_layers.py tests/test_compat.py \
	tests/test_trainer.py::test_wd_mode_is_bitwise_the_stock_trainer \
	tests/test_trainer.py::test_kill_and_resume_is_bitwise_an_uninterrupted_run \
	tests/test_trainer.py::test_folded_pwd_equals_unfolded_pwd_in_the_trainer \
	tests/test_census.py::test_census_passes_on_the_sample tests/test_hub_push.py

compat:
	@set -e; for spec in "low|$(COMPAT_LOW)" "high|$(COMPAT_HIGH)"; do \
	  name=$${spec%%|*}; pins=$${spec#*|}; venv=.venv-compat/$$name; \
	  if [ "$$(cat $$venv/.pins 2>/dev/null)" != "$$pins recipes" ]; then \
	    test -x $$venv/bin/python || $(PYTHON) -m venv $$venv; \
	    $$venv/bin/python -m pip install -q torch==2.13.0; \
	    $$venv/bin/python -m pip install -q -e ".[recipes]" pytest $$pins; \
	    echo "$$pins recipes" > $$venv/.pins; \
	  fi; \
	  echo "== $$name: $$pins"; \
	  HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $$venv/bin/python -m pytest -q -p no:cacheprovider $(COMPAT_TESTS); \
	done
