# Everyday commands. On a fresh machine `make demo` and `make test` do all the set-up:
# create .venv, install requirements-dev.txt, build eexit._C (C++ and, when possible, CUDA).
# EEXIT_CUDA=0 skips the CUDA sources for fast CPU iteration; EEXIT_CUDA=1 makes them required.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
# Rebuilt when a source or the EEXIT_CUDA choice changes.
BUILT := $(VENV)/.eexit-built-cuda$(EEXIT_CUDA)
SOURCES := setup.py $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu')

.PHONY: demo test bench build gpu-check docs data

$(STAMP): requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

build: $(BUILT)

$(BUILT): $(STAMP) $(SOURCES)
	rm -f $(VENV)/.eexit-built-cuda*
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

# Fashion-MNIST for the demo: Debian's dataset-fashion-mnist (30 MB, the four IDX files under
# /usr/share/datasets/fashion-mnist) when missing and this machine can install it (root, apt-get);
# otherwise a note, and the demo falls back to scikit-learn's digits.
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
data:
	@if [ -e $(FASHION_MNIST) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "make data: installing Debian's dataset-fashion-mnist"; \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
	  echo "make data: could not install dataset-fashion-mnist; the demo uses scikit-learn's digits"; \
	else echo "make data: Fashion-MNIST is missing (as root: apt-get install dataset-fashion-mnist); the demo uses scikit-learn's digits"; fi

demo: build data
	$(PY) -m eexit demo

test: build data
	$(PY) -m ruff check .
	EEXIT_REQUIRE_EXTENSION=1 $(PY) -m pytest -q -p no:cacheprovider tests
	$(PY) -m pytest -q -p no:cacheprovider benchmarks --benchmark-disable -k "N64-C10-"
	$(MAKE) docs

# The API reference from the docstrings (docs/: conf.py, index.rst, api/), HTML in docs/_build/html.
# Every warning fails it (-W, --keep-going to list them all; -n: every reference must resolve);
# -E rereads every source, so a warning is reported again on every run, not only after a change.
# It imports eexit from this folder and needs no built extension (eexit.ops then falls back).
docs: $(STAMP)
	$(PY) -m sphinx -E -W --keep-going -n -q -b html docs docs/_build/html

bench: build
	mkdir -p benchmarks/results
	for f in exit_gate dense direct_conv packed_conv lrn max_pool branchynet msdnet; do \
	  $(PY) -m pytest -q -p no:cacheprovider benchmarks/test_bench_$$f.py --benchmark-json=benchmarks/results/latest-$$f.json && \
	  $(PY) benchmarks/strip_json.py benchmarks/results/latest-$$f.json || exit 1; \
	done
	$(PY) benchmarks/report.py benchmarks/results/latest-exit_gate.json
	$(PY) benchmarks/report_dense.py benchmarks/results/latest-dense.json
	$(PY) benchmarks/report_direct_conv.py benchmarks/results/latest-direct_conv.json
	$(PY) benchmarks/report_packed_conv.py benchmarks/results/latest-packed_conv.json
	$(PY) benchmarks/report_lrn.py benchmarks/results/latest-lrn.json
	$(PY) benchmarks/report_max_pool.py benchmarks/results/latest-max_pool.json
	$(PY) benchmarks/report_early_exit.py benchmarks/results/latest-branchynet.json
	$(PY) benchmarks/report_early_exit.py benchmarks/results/latest-msdnet.json
	@echo "copy the tables into benchmarks/results/<name>-<device>-<date>.md"

# On a machine with an NVIDIA GPU, with that machine's own python and torch (no .venv, nothing
# installed from a registry): build against it, run the CUDA and compiled-Triton tests and a short
# benchmark, write benchmarks/results/gpu-check-<device>-<date>.md (under 8 minutes in all).
# GPU_CHECK_DRY=1 runs it on the CPU at tiny sizes (tests/test_gpu_check.py); options: GPU_CHECK_ARGS.
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)
