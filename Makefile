# cidflow — the two commands a newcomer needs are `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: env test lint typecheck pytest postgres bubblewrap demo bench lock clean

env: $(STAMP)

# (Re)create the environment when it is missing or the dependency files changed.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Google's dp-accounting, to cross-check our DP accountant (tests/flows/federated/
# test_fed_privacy.py). Its metadata pins attrs<24 while we pin attrs 26 (it runs with it), so
# it lives aside in .venv/dp-accounting with its two other needs, never on the import path of
# cidflow itself; the test adds it to its own path.
DPACC := $(VENV)/dp-accounting/.installed
$(DPACC): $(STAMP)
	$(BIN)/python -m pip install -q --no-deps --target $(VENV)/dp-accounting \
	  dp-accounting==0.6.0 absl-py==2.5.1 dm-tree==0.1.10
	touch $@

pytest: $(STAMP) postgres bubblewrap $(DPACC)
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=25 $(PYTEST_ARGS)

# The registry suite also runs against PostgreSQL (tests/registry/conftest.py starts a
# throwaway cluster with initdb/pg_ctl): install Debian's server when its binaries are missing.
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing PostgreSQL from Debian's packages (registry tests)"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	fi

# User code on a node runs sandboxed (flows/sandbox.py, tests/flows/test_sandbox.py): install
# Debian's bwrap when it is missing.
bubblewrap:
	@if ! command -v bwrap >/dev/null 2>&1; then \
	  echo "installing bubblewrap from Debian's packages (sandboxed user code)"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; \
	fi

test: lint typecheck pytest

demo: $(STAMP)
	$(BIN)/python -m cidflow.demo

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

lock: $(STAMP)
	( echo "# Lock of every package CI installs (pip install -c constraints.txt -e '.[dev]')."; \
	  echo "# Regenerate with: make lock"; \
	  $(BIN)/python -m pip freeze --exclude-editable | sed 's/+cpu$$//' ) > constraints.txt

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
