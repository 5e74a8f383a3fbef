# The two quickstart commands: `make demo` and `make test`. Each sets up .venv first.
PY := .venv/bin/python

.PHONY: setup demo test test-portable-trajectory bounds constraints docs bench clean

setup:
	bash scripts/setup.sh

demo: setup
	$(PY) cli.py train

# The suite on every core (pytest-xdist; worksteal: a worker that runs dry takes queued tests from
# the other, so the long end-to-end tests do not leave one core idle at the end).
XDIST := -n auto --dist worksteal

test: setup
	$(PY) -m pytest -q $(XDIST)

# The tests whose figures move with the CPU's kernels, under torch's baseline kernels and numba's
# generic x86-64 code: what a CPU unlike this one computes (.ci/run runs it after `make test`).
PORTABLE := ATEN_CPU_CAPABILITY=default NUMBA_CPU_NAME=generic
test-portable-trajectory: setup
	$(PORTABLE) $(PY) -m pytest -q $(XDIST) -m trajectory

# Re-derive the trajectory tests' bounds over seeds and kernel targets (after changing training
# defaults: about 15 minutes on 2 cores; tests/trajectory.py says why).
bounds: setup
	$(PY) scripts/derive_bounds.py --write

# Re-resolve and pin the dependencies (after changing pyproject.toml's, or to move to newer ones).
constraints:
	bash scripts/lock_deps.sh

# Regenerate docs/cli.md from the CLI's --help texts (tests/test_docs.py fails while it is stale).
docs: setup
	$(PY) scripts/gen_cli_docs.py

bench: setup
	$(PY) cli.py bench negatives
	$(PY) cli.py bench train

clean:
	rm -rf .venv runs caches data .pytest_cache
