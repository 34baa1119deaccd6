# Two commands from a fresh clone:  `make repro` (install + dvc repro)  and  `make test` (install + tests).
PYTHON ?= python3.11
VENV   := .venv
# notebook metadata JupyterLab rewrites on every save (the Python version): stripped too; the committed kernel display
# name is the one JupyterLab writes, "Python 3 (ipykernel)" (nbformat requires one)
NB_EXTRA_KEYS := metadata.language_info
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install repro test paper bench clean strip-notebooks

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	# git keeps notebooks output-free whatever JupyterLab saves: nbstripout as a clean filter (.git/config)
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then $(BIN)/nbstripout --install && \
		git config filter.nbstripout.extrakeys '$(NB_EXTRA_KEYS)'; fi
	# `dvc plots show` offline: a page template with Vega inlined (.dvc/tmp, named in .dvc/config.local)
	$(BIN)/python -m tireid_core.offline_plots
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

# After running notebooks in JupyterLab: drop their outputs from the working files, so `dvc status` sees the committed
# notebooks again (git already ignores outputs through the filter).
strip-notebooks: $(STAMP)
	$(BIN)/nbstripout --extra-keys '$(NB_EXTRA_KEYS)' notebooks/*.ipynb

clean:
	rm -rf runs data .dvc/cache
