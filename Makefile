# Two entry points on a fresh machine:  `make demo`  and  `make test`.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow bench clean

setup: $(STAMP)

# Rebuilt only when pyproject.toml changes; finds Python 3.12 itself (tools/find_python.sh).
$(STAMP): pyproject.toml tools/find_python.sh tools/fetch_assets.sh
	@set -e; PY312=$$(bash tools/find_python.sh); \
	  if [ ! -x $(PY) ]; then echo "creating $(VENV) with $$PY312"; "$$PY312" -m venv $(VENV); fi; \
	  $(PY) -m pip install -q --upgrade pip; \
	  $(PY) -m pip install -q -e '.[test]'; \
	  bash tools/fetch_assets.sh $(PY); \
	  touch $(STAMP)

demo: setup
	$(PY) scripts/demo.py

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q

test-slow: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -m slow

bench: setup
	$(PY) scripts/bench.py --config configs/reference_A.yaml --batch 8 --seq-len 128 --markdown bench_A.md --malloc both
	$(PY) scripts/bench.py --config configs/reference_A.yaml --batch 8 --vocab 256 --repeats 3 \
		--sweep 128 512 1024 2048 --train-max 2048 --markdown bench_sweep.md
	$(PY) scripts/bench.py --config configs/reference_A.yaml --batch 1 --vocab 256 --repeats 1 \
		--sweep 8192 --no-train --markdown bench_8192.md

clean:
	rm -rf $(VENV) .jax_cache
