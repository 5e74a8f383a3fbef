# The two quickstart commands: `make demo` and `make test`. Each sets up .venv first.
PY := .venv/bin/python

.PHONY: setup demo test bench clean

setup:
	bash scripts/setup.sh

demo: setup
	$(PY) cli.py train

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) cli.py bench negatives
	$(PY) cli.py bench train

clean:
	rm -rf .venv runs caches data .pytest_cache
