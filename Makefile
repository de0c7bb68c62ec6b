# hetserve: every target installs what it needs into .venv (a fresh machine has only Python and make).
# Installs take the exact versions in requirements.lock (what CI tested); `make lock` refreshes it
# on purpose from the ranges in pyproject.toml.
PYTHON ?= python3
PIP_VERSION := 26.3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-engines lint bench lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q 'pip==$(PIP_VERSION)'

$(STAMP): pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Exit 3 means the verified plan missed its attainment target: the output says so, in red.
# Then the plan runs: an emulated engine per replica, the gateway in front, 200 requests of the
# trace through it over real HTTP.
demo: install
	$(BIN)/hetserve plan --model llama-3.1-70b --workload azure-conv --rate 10 --ttft 2s --tpot 50ms --verify \
	  --out $(VENV)/demo-plan.json || [ $$? -eq 3 ]
	$(BIN)/hetserve up $(VENV)/demo-plan.json --emulate --port 0 --burst 200

test: install
	$(BIN)/ruff check src tests tests_engines benchmarks
	$(BIN)/python -m pytest

# A real engine on this CPU: llama.cpp's server through llama-cpp-python, which compiles
# llama.cpp on install (about 6 minutes on 2 cores; cached afterwards), profiled by hetserve.
# Not part of `make test`.
test-engines: install
	$(BIN)/python -m pip install -q -c requirements.lock -c requirements-engines.lock \
	  'llama-cpp-python[server]' gguf
	$(BIN)/python -m pytest tests_engines -s

bench: install
	@for f in benchmarks/*.py; do \
		case $$f in benchmarks/gpu_steps.py) continue;; esac; \
		echo "== $$f"; $(BIN)/python $$f || exit 1; done

# Resolve the newest versions the ranges in pyproject.toml allow, in a scratch venv, and pin them.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q 'pip==$(PIP_VERSION)'
	.lock-venv/bin/python -m pip install -q '.[test]'
	{ echo "# Exact versions CI tested; 'make lock' refreshes this file (see Makefile)."; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable | grep -vi '^hetserve'; } > requirements.lock
	rm -rf .lock-venv build
	@echo "wrote requirements.lock; run make test before committing it"

clean:
	rm -rf $(VENV) .lock-venv build src/*.egg-info .pytest_cache .ruff_cache
