# Two entry points for a newcomer (see README): `make demo` and `make test`.
# Both create ./.venv on first use (tools/setup_env.sh; idempotent, a no-op once set up).
VENV ?= .venv
PY := $(VENV)/bin/python
export COTAP_VENV := $(abspath $(VENV))

.PHONY: setup demo test
setup:
	bash tools/setup_env.sh

# one thread per process unless OMP_NUM_THREADS says otherwise: the setting of the README's demo table
demo: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) tools/demo.py $(DEMO_ARGS)

test: setup
	$(PY) -m pytest tests -q -p no:cacheprovider $(PYTEST_ARGS)
