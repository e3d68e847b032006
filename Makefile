# The two commands of the quick start: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nasdet-installed
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: install demo test lint bench bench-gpu clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## demo: set up and run an SP-NAS search (short preset) on the bundled digits
demo: $(STAMP)
	$(BIN)/nasdet run configs/spnas_demo.yaml --out runs/demo

## test: set up and run the test suite
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

## bench: regenerate docs/benchmarks.md (about 5 hours on 2 cores; run nothing else meanwhile)
bench: $(STAMP)
	$(BIN)/python benchmarks/coco_eval_speed.py --out docs/benchmarks/coco_eval.md
	$(BIN)/python benchmarks/train_throughput.py --rounds 5 --out docs/benchmarks/train_throughput.md
	$(BIN)/python benchmarks/baselines.py --only baseline_digits fcos_r18_20ep fcos_shufflenet \
		--out docs/benchmarks/baselines.md
	$(BIN)/python benchmarks/spnas_digits.py --compare --out docs/benchmarks/spnas.md
	$(BIN)/python benchmarks/detnas_digits.py --out docs/benchmarks/detnas.md
	$(BIN)/python benchmarks/ofa_digits.py --out docs/benchmarks/ofa.md
	$(BIN)/python benchmarks/ofa_digits.py --parts compare --compare-out docs/benchmarks/ofa_compare.md
	$(BIN)/python benchmarks/latency_digits.py --out docs/benchmarks/latency.md
	$(BIN)/python benchmarks/latency_digits.py --parts compare --compare-out docs/benchmarks/latency_compare.md
	$(BIN)/python benchmarks/collect.py

## bench-gpu: regenerate docs/benchmarks/gpu.md on a machine with one CUDA device (under 8 minutes
## on an H100/H200), then docs/benchmarks.md
bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/gpu.py --out docs/benchmarks/gpu.md
	$(BIN)/python benchmarks/collect.py

clean:
	rm -rf runs .pytest_cache
