# The two commands: `make demo` (fine-tune the embedded default model on InsuranceQA, from the PyPI package) and
# `make test` (every check CI runs). Both create .venv and install everything on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch is installed before the package so that no unpinned requirement pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: demo test install browser check-clean check-sync check-readme lint nbtest pytest readme outputs site clean

install: $(STAMP)

$(STAMP): setup.py settings.ini
	@if [ ! -x $(BIN)/python ]; then \
	  if $(PYTHON) -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then \
	    echo "Using the GPU torch already installed for $(PYTHON)"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; fi
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --progress-bar off "$(TORCH)"
	$(BIN)/pip install --progress-bar off -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/embed-nb demo --data insuranceqa --output-dir runs/demo

test: $(STAMP) browser check-clean check-sync check-readme lint nbtest pytest

# The browser test drives Debian's Chromium with Playwright (no browser download): install it when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null || { echo "Installing Debian's chromium for the browser test"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }
	@command -v chromium

# The notebooks are the source: they must be clean, and exporting them must not change the library.
check-clean: $(STAMP)
	@before=$$(cat nbs/*.ipynb nbs/*/*.ipynb 2>/dev/null | md5sum); $(BIN)/nbdev_clean; \
	after=$$(cat nbs/*.ipynb nbs/*/*.ipynb 2>/dev/null | md5sum); \
	if [ "$$before" != "$$after" ]; then echo "FAIL: notebooks were not clean (nbdev_clean changed them)"; exit 1; fi; \
	echo "ok: notebooks clean"

check-sync: $(STAMP)
	@before=$$(find embed_nb -name '*.py' | sort | xargs cat | md5sum); $(BIN)/nbdev_export; \
	after=$$(find embed_nb -name '*.py' | sort | xargs cat | md5sum); \
	if [ "$$before" != "$$after" ]; then echo "FAIL: embed_nb/ differed from the notebooks (nbdev_export changed it)"; exit 1; fi; \
	echo "ok: library in sync with notebooks"

# The notebooks are committed with their outputs (figures, tables), less the noise: run them all and keep what they show.
outputs: $(STAMP)
	$(BIN)/python tools/outputs.py nbs/[0-9]*.ipynb nbs/tutorials/*.ipynb
	$(BIN)/nbdev_clean

# The notebooks, as committed, as a static HTML site in _site/ (nbconvert; nothing is run).
site: $(STAMP)
	$(BIN)/python tools/site.py _site

readme: $(STAMP)
	$(BIN)/jupyter nbconvert --to markdown --log-level WARN nbs/index.ipynb --stdout > README.md

check-readme: $(STAMP)
	@$(BIN)/jupyter nbconvert --to markdown --log-level WARN nbs/index.ipynb --stdout | diff -q - README.md >/dev/null \
	  || { echo "FAIL: README.md differs from nbs/index.ipynb (run make readme)"; exit 1; }; echo "ok: README in sync"

# ruff (line length 119, as sentence-transformers): the exported library, the tests, the benchmarks and the tools are
# linted; the notebooks the library comes from, the tests, the benchmarks and the tools are formatted.
lint: $(STAMP)
	$(BIN)/ruff check embed_nb tests bench tools
	$(BIN)/ruff format --check nbs tests bench tools

# Notebooks and tests run two at a time, each torch process on one thread (OMP_NUM_THREADS=1): two jobs of two
# threads each on two cores spin-wait for each other (measured: pytest 666 s with the default threads, 526 s with
# one; the JupyterLab tutorial test within it 246 s against 96 s). The processes embed_nb launches take their share
# from it too.
# Three tutorials are left out here: tests/test_browser.py runs them whole, in JupyterLab, and checks more than
# nbdev_test. The tutorial on your own documents runs here.
nbtest: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --skip_file_re '^([_.]|(insuranceqa|insuranceqa_zh|widgets)\.ipynb$$)'

pytest: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -q -p no:cacheprovider -n 2 --dist loadgroup --durations=15

clean:
	rm -rf $(VENV) runs build *.egg-info
