# The course's commands (README "Set-up"). Every target that runs code depends on `setup`,
# which builds .venv once (and again when pyproject.toml changes).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# one torch thread per pytest worker / kernel: two workers on two cores, not four threads fighting
TEST_WORKERS ?= 2
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: setup demo test lab book clean

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

# Unit tests and every notebook, executed by nbval, two workers.
test: setup
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile \
	    tests notebooks --nbval-lax --nbval-current-env --nbval-kernel-name python3

lab: setup
	$(BIN)/jupyter lab $(ROOT_FLAG) notebooks

# The course as a Jupyter Book, offline, warnings as errors: executes the notebooks (two at a time,
# unchanged ones are reused) and renders them into book/_build/html (tools/build_book.py).
book: setup
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python tools/build_book.py --jobs $(TEST_WORKERS)

clean:
	rm -rf runs book/_build .pytest_cache
