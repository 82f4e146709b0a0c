# The two commands of the README:
#   make book   build and execute the book (quick mode) into _build/html
#   make test   run the whole test suite, including the headless-browser check of the built book
# Both create or refresh the virtual environment in .venv first.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: env book serve browser test bench reproduce explore gpu-check clean

env:
	@bash scripts/setup_env.sh

# -W: warnings are errors. Executed outputs are cached (execute_notebooks: cache in _config.yml,
# kept in _build/.jupyter_cache), so an unchanged rebuild takes seconds. Sphinx does not re-read
# unchanged pages, so after a failed build the next one would pass without repeating the
# warnings: on failure the Sphinx environment (_build/.doctrees) is dropped, and the next build
# re-reads every page (from the execution cache, without re-running it). The cache is keyed by a
# page's code only, so when the package, the committed results or the pins change (their hash in
# _build/.inputs_hash) the cache is dropped and every page runs again: no page shows a stale output.
book: env
	@key=$$(find src data pyproject.toml constraints.txt -type f -not -path '*/__pycache__/*' -print0 \
	  | LC_ALL=C sort -z | xargs -0 cat | sha256sum | cut -d' ' -f1); \
	if [ -d _build/.jupyter_cache ] && [ "$$(cat _build/.inputs_hash 2>/dev/null)" != "$$key" ]; then \
	  echo "src/, data/ or the pins changed since the last build: every page runs again"; \
	  rm -rf _build/.jupyter_cache _build/.doctrees; fi; \
	mkdir -p _build && echo "$$key" > _build/.inputs_hash
	$(VENV)/bin/jupyter-book build . -W --keep-going || { rm -rf _build/.doctrees; \
	  echo "error: the book build failed (warnings are errors); see the messages above" >&2; exit 1; }
	@echo "Book built: file://$(CURDIR)/_build/html/index.html"

# The built book over HTTP on http://127.0.0.1:$(PORT) (default 8000; Ctrl-C stops it). Opened from
# the file system the book works too, but a browser will not let the search page read the other
# pages from disk, so its hits come without excerpts; served, they have them.
PORT ?= 8000
serve:
	@test -f _build/html/index.html || { echo "error: no built book in _build/html: run make book first" >&2; exit 1; }
	@echo "Serving the book on http://127.0.0.1:$(PORT)/ (Ctrl-C stops it)"
	@python3 -m http.server $(PORT) --bind 127.0.0.1 --directory _build/html

# Chromium + chromedriver for tests/test_book_browser.py (apt-get, when root and missing).
browser:
	@bash scripts/ensure_chromium.sh

# The browser test opens every page of _build/html, so the book is built (cached) first.
test: env browser book
	$(PY) -m pytest

# Reproduce the book's experiment pages through papermill: make reproduce [QUICK=1] [ONLY=ufm10,cost]
# [DEVICE=cuda]. Full mode (the default) writes each page's executed notebook beside its results.
reproduce: env
	$(PY) -m guiding_nc.notebooks $(if $(filter 1 true True yes,$(QUICK)),--quick,--full) \
	  $(if $(ONLY),--only $(ONLY)) $(if $(DEVICE),-p DEVICE=$(DEVICE))

bench: env
	$(PY) -m guiding_nc.bench etf --threads 1 --repeats 5 --tr-repeats 3 --tr-cap-s 120 --out data/bench/etf_cpu.json
	$(PY) -m guiding_nc.bench etf --threads 2 --repeats 5 --tr-repeats 3 --tr-cap-s 120 --out data/bench/etf_cpu_2threads.json

# The checks that need a CUDA device, about 8 minutes on one H200 (stages: python -m guiding_nc.gpu_check
# --dry-run): the cuda-marked tests, bench etf and overhead, the cost table and the UFM scaling
# experiment, into data/bench/*_cuda.json and data/results/*_cuda/. No virtual environment needed
# (PYTHON=python3 on a GPU machine); refuses without CUDA. Options: GPU_CHECK_ARGS="--seeds 0 1 --archive x.tgz".
gpu-check:
	@bash scripts/gpu_check.sh $(GPU_CHECK_ARGS)

# The live UFM explorer (book/06_ufm_explorer.md) in JupyterLab: the page as a notebook in runs/explore/
# (scratch, ignored by git; remade when the page changes), then a JupyterLab server on it (Ctrl-C stops it).
# JUPYTER_ARGS passes options, e.g. make explore JUPYTER_ARGS="--no-browser --port 8899" (as root,
# e.g. in a container, --allow-root is added).
EXPLORE_NB := runs/explore/06_ufm_explorer.ipynb

$(EXPLORE_NB): book/06_ufm_explorer.md
	@mkdir -p $(dir $@)
	$(VENV)/bin/jupytext --to ipynb $< -o $@

explore: env $(EXPLORE_NB)
	@$(VENV)/bin/jupyter-lab --version >/dev/null 2>&1 || \
	  $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[book]"
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) $(JUPYTER_ARGS) $(EXPLORE_NB)

clean:
	rm -rf _build artifacts .pytest_cache .hypothesis
