# Set-up and everyday commands. Every target installs what it needs first, so a fresh machine
# needs nothing but Python 3.10+ and pip.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := .make/installed

.PHONY: install demo test test-quick lint bench

$(STAMP): pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) bash scripts/install.sh
	@mkdir -p .make && touch $(STAMP)

install: $(STAMP)

## The main job on the embedded default dataset: semantic IDs for MovieLens-1M items.
demo: $(STAMP)
	semid index build --dataset ml-1m --quantizer rqkmeans:3x256 --out runs/ml-1m/index
	semid index stats runs/ml-1m/index

## The whole test suite (about 10 minutes on 2 cores).
test: $(STAMP)
	$(PYTHON) -m pytest -q

## The quick subset: everything but the slow end-to-end tests.
test-quick: $(STAMP)
	$(PYTHON) -m pytest -q -m "not slow"

lint: $(STAMP)
	ruff check . && ruff format --check .
