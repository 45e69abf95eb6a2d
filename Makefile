# Two entry points: `make demo` (the whole pipeline on generated data) and `make test`.
# Each creates .venv when missing and installs into it exactly the locked versions
# (requirements-test.lock, hashes checked), then the project itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
TEST_LOCK := requirements-test.lock
# `make lock` compiles both locks from pyproject.toml for every platform and Python >= 3.11.
# pyimgaug's opencv-python is left out (its GUI build needs libGL/X11): the headless build
# is the only OpenCV, and --no-deps installs keep it so.
COMPILE := $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 \
	--generate-hashes --no-emit-package opencv-python \
	--custom-compile-command "make lock" --quiet

.PHONY: demo test test-docker lint install lock bench bench-scale

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml $(LOCK) $(TEST_LOCK) | $(BIN)/python
	@# opencv-python (pulled in by an earlier unlocked install) shares the cv2 folder with
	@# the headless build: remove both, the lock puts the headless one back.
	$(BIN)/pip uninstall -qq -y opencv-python opencv-python-headless 2>/dev/null || true
	$(BIN)/pip install -qq --require-hashes --no-deps -r $(TEST_LOCK)
	$(BIN)/pip install -qq --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

lock: $(STAMP)
	$(COMPILE) -o $(LOCK)
	$(COMPILE) --extra test -c $(LOCK) -o $(TEST_LOCK)

demo: $(STAMP)
	$(BIN)/pneumo demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

# Every benchmark, one JSON line per figure written to bench/results/<date>-<time>-<host>.jsonl
# (when make bench started: one file per run, BENCH_RESULTS, so the table shows only this
# run's figures), then the performance table of docs/benchmarks.md regenerated from it. Run it on an
# otherwise idle machine: the demo's training phase and Prefect's overhead are wall times.
bench: export BENCH_RESULTS := $(CURDIR)/bench/results/$(shell date -u +%F-%H%M)-$(shell hostname).jsonl
bench: $(STAMP)
	$(BIN)/python -m bench.bench_decode
	$(BIN)/python -m bench.bench_prepare
	$(BIN)/python -m bench.bench_metric
	$(BIN)/python -m bench.bench_loader
	$(BIN)/python -m bench.bench_train --recipes ci --repeat 1  # --recipes default: 3 min more
	$(BIN)/python -m bench.bench_inference
	$(BIN)/python -m bench.demo_training --seeds 0
	$(BIN)/python -m bench.bench_orchestration --epochs 2
	$(BIN)/python -m bench.table --results $$BENCH_RESULTS --write docs/benchmarks.md

# Ingest, prepare and a training epoch's loader at competition scale (26,684 + 3,000 generated
# real-sized DICOMs) against SeaweedFS, apart from `bench`: about 25 GB of disk under
# SCALE_OUT (default the temp folder), all removed at the end. A quick check:
# make bench-scale SCALE_ARGS="--n-train 300 --n-test 50"
bench-scale: $(STAMP)
	$(BIN)/python -m bench.bench_scale $(if $(SCALE_OUT),--out $(SCALE_OUT)) $(SCALE_ARGS)

# The Docker tests alone (`make test` runs them last): a private dockerd, the Debian base image,
# a local registry, `prefect deploy` and fold containers. Installs the engine when missing
# (Debian, root) and builds the worker image into the kept layer cache first (the first time
# about 11 minutes here, then seconds); under CI=true a skip fails.
test-docker: $(STAMP)
	tests/docker/prerequisites.sh warm
	$(BIN)/python -m pytest -m docker tests/docker

# The generated parts of docs/configuration.md and docs/cli.md, written from the run
# configuration, the PNEUMO_* settings and the command's parser (tests/unit/test_docs.py
# fails while they differ from the code).
.PHONY: docs
docs: $(STAMP)
	$(BIN)/python -m bench.docs_pages --write
