# Set-up and everyday jobs. `make demo` and `make test` each create .venv first if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO_OUT ?= demo_out
STAMP  := $(VENV)/.installed
# 2 cores here: one thread per process keeps pytest and numba/torch from fighting.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: setup demo test test-slow bench bench-memory report-real detectron2 clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: setup
	$(BIN)/python -m tools.demo --out $(DEMO_OUT)

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

# Optional: the detectron2 model family. detectron2 publishes no wheels: build one from its source
# (a git clone, or a .tar.gz / .zip of one) against the installed torch, cache it in wheels/ with
# its pinned dependencies (wheels/detectron2.txt) and install them, offline from the cache.
detectron2: setup
	@test -n "$(SRC)" || { echo "usage: make detectron2 SRC=path/to/detectron2 (a git clone or a tarball of it)"; exit 2; }
	$(BIN)/python -m tools.detectron2_wheel --src "$(SRC)" --install

bench: setup
	$(BIN)/python -m benchmarks.bench

bench-memory: setup
	$(BIN)/python -m benchmarks.memory

# The held-out benchmark on real images (README "Real data"), TTA ensemble included: about
# 2.5 hours on 2 CPU cores.
REAL ?= ../shared/data/sartorius
report-real: setup
	$(BIN)/python -m kit.report --data $(REAL) --folds $(REAL)/folds.csv --held-out 3 --out report_real

clean:
	rm -rf demo_out .pytest_cache
