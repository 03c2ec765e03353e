# Every target creates .venv on first use, so `make test` alone sets up a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(abspath $(VENV))/bin/python
STAMP := $(VENV)/.installed-stamp

SUBMISSION ?= solutions
OUT ?= build/grade
JOBS ?= 2
# A CPU demo that shows recognizable digits in ~7 minutes on 2 cores (main.py's defaults are Colab's).
TRAIN_ARGS ?= --image_size 16 --unet_dim_mults 1 2 4 --threads 1 --train_steps 3000 \
	--save_and_sample_every 1000 --save_folder ../build/train

# Part 2's CPU demo: train_binary.py's defaults (1500 steps of binarized 16x16 digits).
TRAIN_BINARY_ARGS ?= --threads 1 --save_folder ../build/train_binary

.PHONY: setup test grade grade-all need-submissions release written train train-binary bench lint clean

setup: $(STAMP)

# torch and torchvision are pinned as a pair that exists only in the package registry
# (a local CPU-only torch wheel would otherwise be picked and break torchvision).
$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

test: setup
	$(PY) -m pytest

grade: setup
	$(PY) -m autograder grade $(SUBMISSION) --out $(OUT)

grade-all: need-submissions setup
	$(PY) -m autograder grade-all $(SUBMISSIONS) --out $(OUT) --jobs $(JOBS)

need-submissions:
	@test -n "$(SUBMISSIONS)" || { echo "make grade-all needs SUBMISSIONS=folder, the folder that holds one diffusion.py (or one folder) per student, e.g. make grade-all SUBMISSIONS=path/to/submissions OUT=build/all" >&2; exit 2; }

release: setup
	$(PY) -m release
	$(PY) -m release.written

# The written part: dist/written/{handout,key}.pdf and rubric.md. Needs pdflatex (Debian:
# texlive-latex-base); without it, it says so and writes only rubric.md and handout.tex.
written: setup
	$(PY) -m release.written

train: setup
	cd solutions && $(PY) main.py $(TRAIN_ARGS)

train-binary: setup
	cd solutions && $(PY) train_binary.py $(TRAIN_BINARY_ARGS)

bench: setup
	$(PY) -m bench

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf build dist .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
