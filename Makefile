# The two commands that matter: `make demo` (the main job end to end) and `make test`.
PYTHON ?= python3

.PHONY: install demo test lint typecheck unit integration chaos stack-up stack-down clean

install:
	$(PYTHON) -m pip install -q -e '.[dev]'

demo: install
	router-stream demo

test: install lint typecheck
	$(PYTHON) -m pytest -q -p no:cacheprovider --durations=15

lint:
	$(PYTHON) -m ruff check router_stream tests bench

typecheck:
	$(PYTHON) -m mypy

unit:
	$(PYTHON) -m pytest -q tests/unit

integration:
	$(PYTHON) -m pytest -q tests/integration

# The fault suite against the real servers (< 20 min); prints the table. CHAOS_ARGS=--quick
chaos:
	ROUTER_FUZZ_EXAMPLES=$${ROUTER_FUZZ_EXAMPLES:-5000} $(PYTHON) -m pytest -q -p no:cacheprovider tests/unit/test_fuzz_path.py
	$(PYTHON) -m tests.chaos.run $(CHAOS_ARGS)

stack-up:
	router-stream stack up

stack-down:
	router-stream stack down

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
