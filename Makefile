# `make test` and `make demo` set everything up on a fresh machine: a .venv with the pinned packages.
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP_ARGS ?=  # extra pip options, e.g. a CPU-only torch index (README)

.PHONY: install test demo bench benchmark clean

$(STAMP): requirements.txt setup.py
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q $(PIP_ARGS) -r requirements.txt
	$(VPY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VPY) -m pytest -q tests

demo: $(STAMP)
	$(VPY) tools/demo.py

bench: $(STAMP)
	for b in bench/bench_*.py; do $(VPY) $$b || exit 1; done

# make benchmark PROTOCOL=supervised [BENCHMARK_ARGS="--jobs 1"]: configs/benchmark/<PROTOCOL>.yaml -> docs/benchmark/
# (writes the frozen synthetic data first; two one-thread runs side by side, as the committed reports were made: a
# run's numbers are bit-exact per thread count, so --threads 1 keeps them comparable; drop it to share idle cores)
BENCHMARK_ARGS ?= --jobs 2 --threads 1
benchmark: $(STAMP)
	@test -n "$(PROTOCOL)" || { echo "usage: make benchmark PROTOCOL=<name of configs/benchmark/<name>.yaml>"; exit 2; }
	$(VPY) tools/make_synthetic.py --root datasets/synthetic > /dev/null
	$(VPY) tools/benchmark.py $(PROTOCOL) $(BENCHMARK_ARGS)

clean:
	rm -rf output $(VENV)
