# Set-up and everyday commands. Every target installs what it needs first, so a fresh machine
# needs nothing but Python 3.10+ and pip.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# the CLI of $(PYTHON)'s installation (a `semid` on PATH may belong to another environment)
SEMID ?= $(PYTHON) -m semid.cli.main
STAMP := .make/installed

.PHONY: install demo demo-index test test-quick lint

$(STAMP): pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) bash scripts/install.sh
	@mkdir -p .make && touch $(STAMP)

install: $(STAMP)

## The main job on the embedded default dataset (MovieLens-100k): semantic IDs from item texts and
## the training interactions, a generative recommender (MMGRec) trained on them, and its test metrics.
demo: $(STAMP)
	$(SEMID) index build --dataset ml-100k --quantizer graph_rqvae:3x256 --collisions popularity --out runs/ml-100k/index
	$(SEMID) train recommender --dataset ml-100k --index runs/ml-100k/index --model mmgrec --out runs/ml-100k/mmgrec
	$(SEMID) eval runs/ml-100k/mmgrec --k 5 10 --split test
	$(SEMID) predict runs/ml-100k/mmgrec --user 196 --k 10

## Semantic IDs for MovieLens-1M's 3,706 movies, with the codebook health report.
demo-index: $(STAMP)
	$(SEMID) index build --dataset ml-1m --quantizer rqkmeans:3x256 --out runs/ml-1m/index --plot runs/ml-1m/usage.png
	$(SEMID) index stats runs/ml-1m/index

## The whole test suite (about 10-18 minutes on 2 cores, by load; 2220 tests, 9 of them skipped without a CUDA GPU).
test: $(STAMP)
	$(PYTHON) -m pytest -q

## The quick subset: everything but the slow end-to-end tests.
test-quick: $(STAMP)
	$(PYTHON) -m pytest -q -m "not slow"

lint: $(STAMP)
	ruff check . && ruff format --check .
