# mgll-loss developer tasks.
#
#   make install    create .venv (if missing) and install the package editable with the dev extras
#   make test       fast test suite (everything not marked slow), 2 pytest-xdist workers
#   make test-slow  only the tests marked slow
#   make test-min   the library's tests on the oldest declared versions (tests/min-versions.txt), in .venv-min
#   make lint       ruff: lint, import order and formatting check (`make format` rewrites)
#   make typecheck  mypy on the package (it ships py.typed)
#   make docs       build the Sphinx documentation into docs/_build/html (warnings are errors)
#   make docs-check make docs, then check in headless Chromium, network off, that every formula renders
#   make demo       the main job: MGLL vs plain CLIP pretraining on synthetic fundus data (a few minutes on CPU)
#   make export-demo  a short MGLL run of the ViT example model, its image tower exported for an MLLM
#   make ablation   the paper's loss ablation (Table 3) on the synthetic fundus set, 3 seeds: table, CSV and plot
#   make bench      benchmarks (CPU presets, tens of minutes): CSV + PNG into benchmarks/results
#   make bench-accumulation   one effective step of B=512: full batch vs accumulate_step vs naive (minutes)
#   make gpu-check  on one CUDA device (< 8 minutes): backend parity, no host syncs, fullgraph compile, GPU benchmark
#   make dist       build sdist + wheel into dist/ and run twine check
#   make clean      remove build artefacts and caches (keeps .venv)

VENV ?= .venv
PY = $(VENV)/bin/python
PIP = $(PY) -m pip

# Stamp files make re-runs cheap: the dev install only re-runs when pyproject.toml changes.
INSTALL_STAMP = $(VENV)/.installed-dev
BUILD_STAMP = $(VENV)/.installed-build
DOCS_STAMP = $(VENV)/.installed-docs
DEMO_STAMP = $(VENV)/.installed-examples

PYTEST_WORKERS ?= 2

.DEFAULT_GOAL := test
.PHONY: install test test-slow test-min lint format typecheck docs docs-check demo export-demo ablation bench bench-accumulation gpu-check dist clean

# --- environment -------------------------------------------------------------------------

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip

$(INSTALL_STAMP): pyproject.toml | $(PY)
	$(PIP) install -e ".[dev]"
	@touch $@

# Only what `make dist` needs (build + twine), so building does not pull in torch.
$(BUILD_STAMP): | $(PY)
	$(PIP) install --upgrade build twine
	@touch $@

# Only what `make docs` needs (the package and the docs extra), re-run when pyproject.toml changes.
$(DOCS_STAMP): pyproject.toml | $(PY)
	$(PIP) install -e ".[docs]"
	@touch $@

install: $(INSTALL_STAMP)

# --- tests -------------------------------------------------------------------------------

# Tests never reach the Hugging Face Hub.
test test-slow: export HF_HUB_OFFLINE = 1
test test-slow: export TRANSFORMERS_OFFLINE = 1

test: install
	$(PY) -m pytest -m "not slow" -n $(PYTEST_WORKERS)

# Exit status 5 means "no tests collected" (no slow tests yet): not a failure.
test-slow: install
	$(PY) -m pytest -m slow -n $(PYTEST_WORKERS) || [ $$? -eq 5 ]

# The oldest versions pyproject.toml declares (torch and the open_clip and hf extras' floors, pinned in
# tests/min-versions.txt with what they need and the test tools), in a venv of their own, and the tests
# of the library on them: the core, distributed and adapter tests and the doctests. Tests of other
# extras (examples, docs, benchmarks) are not collected; those that need a package this venv lacks
# skip (pytest.importorskip). The install is several GB (CUDA builds of torch from PyPI).
MIN_VENV ?= .venv-min
MIN_PY = $(MIN_VENV)/bin/python
MIN_STAMP = $(MIN_VENV)/.installed-min
MIN_TESTS = tests/test_versions.py tests/test_backends.py tests/test_modules.py tests/test_targets.py \
	tests/test_validation.py tests/test_numerics.py tests/test_parity_reference.py tests/test_parity_external.py \
	tests/test_properties.py tests/test_compile.py tests/test_double_backward.py tests/test_finite_features.py \
	tests/test_norm_check.py tests/test_string_labels.py tests/test_accumulation.py \
	tests/test_distributed.py tests/test_distributed_strings.py tests/test_adapters.py tests/test_hf_trainer.py \
	mgll_loss

$(MIN_PY):
	python3 -m venv $(MIN_VENV)
	$(MIN_PY) -m pip install --upgrade pip

$(MIN_STAMP): pyproject.toml tests/min-versions.txt | $(MIN_PY)
	$(MIN_PY) -m pip install -e ".[open_clip,hf]" -r tests/min-versions.txt
	@touch $@

test-min: export HF_HUB_OFFLINE = 1
test-min: export TRANSFORMERS_OFFLINE = 1
test-min: $(MIN_STAMP)
	$(MIN_PY) -m pytest -m "not slow" -n $(PYTEST_WORKERS) $(MIN_TESTS)

# --- lint and types --------------------------------------------------------------------

LINT_PATHS = mgll_loss tests benchmarks examples docs/conf.py docs/check_offline_math.py conftest.py

lint: install
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

format: install
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

typecheck: install
	$(VENV)/bin/mypy

# --- docs --------------------------------------------------------------------------------

# Warnings are errors. -E rereads every page, so docstring edits in mgll_loss/ (which Sphinx does
# not track) always show up and warnings are never hidden by a cached build. Works offline.
docs: $(DOCS_STAMP)
	$(PY) -m sphinx -W --keep-going -E -b html docs docs/_build/html

# The built pages render their formulas with no network: MathJax comes from the docs extra
# (sphinx-mathjax-offline), and docs/check_offline_math.py opens every page with math in headless
# Chromium (CHROMIUM=..., else chromium on the PATH; Debian: apt-get install chromium) with the
# network off and fails on any formula left as TeX source.
docs-check: docs
	$(PY) docs/check_offline_math.py docs/_build/html

# --- demo --------------------------------------------------------------------------------

# Only what the examples need (the package and the examples extra), re-run when pyproject.toml changes.
$(DEMO_STAMP): pyproject.toml | $(PY)
	$(PIP) install -e ".[examples]"
	@touch $@

# The fundus example on the built-in synthetic set, MGLL and then the plain CLIP baseline with the
# same model, data, seed and steps; then both metric tables side by side and one comparison plot.
DEMO_DIR ?= runs/demo
DEMO_FLAGS ?= --synthetic --data-dir $(DEMO_DIR)/synthetic-fundus --epochs 12 --batch-size 50 --overwrite
demo: $(DEMO_STAMP)
	$(PY) examples/pretrain_fundus.py $(DEMO_FLAGS) --loss mgll --output-dir $(DEMO_DIR)/mgll
	$(PY) examples/pretrain_fundus.py $(DEMO_FLAGS) --loss clip --output-dir $(DEMO_DIR)/clip
	$(PY) examples/compare_runs.py $(DEMO_DIR)/mgll $(DEMO_DIR)/clip --plot $(DEMO_DIR)/comparison.png
	$(PY) examples/finetune_downstream.py --synthetic --data-dir $(DEMO_DIR)/synthetic-downstream --mode probe \
		--checkpoint $(DEMO_DIR)/mgll/last.pt --checkpoint $(DEMO_DIR)/clip/last.pt --output-dir $(DEMO_DIR)/downstream

# The vision-tower export (docs/guides/mllm-vision-tower.md): an MGLL run of the demo's set with the
# ViT example model (the demo's 'tiny' tower is a ResNet, which no CLIPVisionModel holds), then its image
# tower written as a Hugging Face CLIPVisionModel directory, reloaded and compared with the checkpoint.
EXPORT_DIR ?= runs/export-demo
EXPORT_FLAGS ?= --synthetic --data-dir $(DEMO_DIR)/synthetic-fundus --epochs 4 --batch-size 50 --overwrite
export-demo: $(DEMO_STAMP)
	$(PY) examples/pretrain_fundus.py $(EXPORT_FLAGS) --model tiny-vit --loss mgll --output-dir $(EXPORT_DIR)/mgll
	$(PY) examples/export_vision_tower.py --checkpoint $(EXPORT_DIR)/mgll/last.pt \
		--output-dir $(EXPORT_DIR)/vision-tower --overwrite

# The loss ablation: nine configurations (CLIP, L_P, L_sCLIP, L_sCLIP + L_P, MGLL, MGLL with 30% texts
# missing, and the point-wise ones with a logit bias), same model, data and steps, each trained per seed
# (its own synthetic sets in $(ABLATION_DIR)/seed-N); the table holds mean ± std; finished runs are reused.
ABLATION_DIR ?= runs/ablation
ABLATION_SEEDS ?= 0,1,2
ABLATION_FLAGS ?= --synthetic --seeds $(ABLATION_SEEDS) --epochs 6 --batch-size 50 --downstream
ablation: $(DEMO_STAMP)
	$(PY) examples/ablation.py $(ABLATION_FLAGS) --output-dir $(ABLATION_DIR)

# --- packaging ---------------------------------------------------------------------------

# --- benchmarks --------------------------------------------------------------------------

# BENCH_PRESET=quick for a smoke run of a few seconds; BENCH_PRESET=gpu on a CUDA machine.
BENCH_PRESET ?= cpu
bench: install
	$(PY) -m benchmarks.run --preset $(BENCH_PRESET) --out benchmarks/results

bench-accumulation: install
	$(PY) -m benchmarks.accumulation --out benchmarks/results

# Parity of every backend on CUDA (fp32/bf16/fp16), set_sync_debug_mode("error"), torch.compile(fullgraph=True),
# and the GPU benchmark preset: summary.json, results.csv, time.png. Its CPU dry run is part of `make test`.
GPU_CHECK_DIR ?= benchmarks/results/gpu-check
gpu-check: install
	$(PY) -m benchmarks.gpu_check --out $(GPU_CHECK_DIR)

dist: $(BUILD_STAMP)
	rm -rf dist/
	$(PY) -m build
	$(PY) -m twine check --strict dist/*

clean:
	rm -rf build/ dist/ *.egg-info .pytest_cache .hypothesis docs/_build
	find . -path ./$(VENV) -prune -o -path ./$(MIN_VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
