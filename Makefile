# The course's commands (README "Set-up"). Every target that runs code depends on `setup`,
# which builds .venv once (and again when pyproject.toml changes).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# one torch thread per pytest worker / kernel: two workers on two cores, not four threads fighting
TEST_WORKERS ?= 2
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: setup demo photos test lab book browser check-book clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (cutlib)" > /dev/null
	touch $(STAMP)

# The course's main demo: see README. Writes into runs/demo/.
demo: setup
	$(BIN)/python -m cutlib demo --out runs/demo

# Real photos (README "Real photos"): the laptop preset on horse2zebra (downloaded through the catalog on first
# use) or on any folder with trainA/trainB/testA/testB: make photos DATASET=path/to/folder. Writes runs/photos/.
DATASET ?= horse2zebra
photos: setup
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m cutlib demo --photos $(DATASET) --out runs/photos

# Unit tests and every notebook, executed by nbval, two workers. Chapter 10 trains on real photos: the
# catalog's horse2zebra when downloaded, else CUTLIB_PHOTOS (the course machines' slice by default).
CUTLIB_PHOTOS ?= $(abspath $(wildcard ../shared/data/horse2zebra_cpu))
export CUTLIB_PHOTOS
test: setup
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile \
	    tests notebooks --nbval-lax --nbval-current-env --nbval-kernel-name python3

# JupyterLab on the notebooks, on this machine only (127.0.0.1); it prints the URL to open. The course
# kernel "Python 3 (cutlib)" (name python3, the one every notebook names) is the venv's own: preferred
# over a python3 kernel of another Python in the user's Jupyter folders. No news feed or update check
# (they would ask the internet).
lab: setup
	JUPYTER_PREFER_ENV_PATH=1 $(BIN)/jupyter lab $(ROOT_FLAG) --ServerApp.ip=127.0.0.1 \
	    --ServerApp.root_dir=notebooks --MappingKernelManager.default_kernel_name=python3 \
	    --LabApp.news_url=None --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate

# The course as a Jupyter Book, offline, warnings as errors: executes the notebooks (two at a time,
# unchanged ones are reused) and renders them into book/_build/html (tools/build_book.py).
book: setup
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python tools/build_book.py --jobs $(TEST_WORKERS)

# Debian's chromium, run headless by the book's browser checks; installed only when missing (as root,
# as on the course machines and CI; otherwise it says what to run).
browser:
	@command -v chromium > /dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core > /dev/null; \
	  else echo "chromium is missing: sudo apt-get install chromium fonts-dejavu-core" >&2; exit 1; fi; }
	@chromium --version 2> /dev/null

# The built book (run `make book` first) in headless Chromium: on every page the maths is typeset,
# no output is a traceback, no figure is empty or blank, nothing comes from another host.
# Screenshots of the pages go to book/_build/screenshots/.
check-book: setup browser
	@test -f book/_build/html/intro.html || { echo "the book is not built: run make book first" >&2; exit 1; }
	$(BIN)/python -m pytest -q tests/test_browser_book.py tests/test_book.py

clean:
	rm -rf runs book/_build .pytest_cache
