# Every target creates (or reuses) its own virtualenv in .venv, so a fresh machine needs only
# Python >= 3.11:  make demo  |  make test  |  make bench
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO ?= demo_out
SEED ?= 0
CLIPS ?= 1024
# off: every frame shows an object and its note (no empty screens, which carry no timing)
GAPS ?= off
RECIPE ?= configs/demo.py
# XLA:CPU maps a fresh temp buffer every step; malloc with transparent huge pages makes CPU train
# steps ~10% faster (cavmae_jax/hostmem.py). A GLIBC_TUNABLES of your own takes precedence.
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: venv demo demo-long test bench lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# Synthetic clips -> ArrayRecord -> train the tiny Sync demo model on CPU -> retrieval on held-out
# clips, printed beside chance. See README.md "What the demo shows". `make demo SEED=1
# DEMO=demo_s1` draws other clips and trains with another seed, in a folder of its own.
demo: venv
	$(PY) -m data_prep.synthetic --output $(DEMO)/videos --num_clips $(CLIPS) --seed $(SEED) --gaps $(GAPS) --size 64 64 --workers 2
	$(PY) -m data_prep.convert --input $(DEMO)/videos --labels $(DEMO)/videos/labels.csv --holdout 0.1667 --holdout_split test --output $(DEMO)/data --workers 2 --image_size 64
	$(PY) -m cavmae_jax.main --config=$(RECIPE) --workdir=$(DEMO)/run --config.data.dir=$(DEMO)/data --config.train.seed=$(SEED)
	$(PY) -m cavmae_jax.evaluate --checkpoint=$(DEMO)/run --task=retrieval

# The same demo with 2x the clips and 2x the steps (configs/demo.py:long, ~20 min on 2 cores):
# how far more clips and steps carry single moments. Folder demo_long_out unless DEMO is given.
demo-long:
	$(MAKE) demo CLIPS=2048 RECIPE=configs/demo.py:long \
		DEMO=$(if $(filter command line,$(origin DEMO)),$(DEMO),demo_long_out)

test: venv
	$(VENV)/bin/pytest -q -n 2 --dist loadfile --durations=15 tests

bench: venv
	$(PY) benchmarks/model_step.py --arch sync --size tiny --batch 4
	$(PY) benchmarks/demo_step.py
	$(PY) benchmarks/retrieval.py
	$(PY) benchmarks/loader.py
	$(PY) benchmarks/data_prep.py

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(DEMO)
