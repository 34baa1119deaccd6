# Two commands from a fresh clone:  `make repro` (install + dvc repro)  and  `make test` (install + tests).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install repro test paper bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

repro: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro

test: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q

# The paper configuration of the baseline (GPU, real CUHK-PEDES): make paper ROOT=/path/to/CUHK-PEDES
paper: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m tireid_core.train baseline --row full --profile paper --set baseline.data.root=$(ROOT)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_repro.py

clean:
	rm -rf runs data .dvc/cache
