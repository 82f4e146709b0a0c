# The two commands of the README:
#   make book   build and execute the book (quick mode) into _build/html
#   make test   run the whole test suite
# Both create or refresh the virtual environment in .venv first.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: env book test bench clean

env:
	@bash scripts/setup_env.sh

book: env
	$(VENV)/bin/jupyter-book build . -W --keep-going
	@echo "Book built: file://$(CURDIR)/_build/html/index.html"

test: env
	$(PY) -m pytest

bench: env
	$(PY) -m guiding_nc.bench etf --out data/bench/etf_cpu.json

clean:
	rm -rf _build .pytest_cache .hypothesis
