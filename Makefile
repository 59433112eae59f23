# Quick start: `make demo` and `make test`. Both create ./.venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean venv

venv: $(STAMP)

# torch is pinned through constraints.txt: on this machine torch==2.13.0 is the
# local CPU wheel, while a bare range would pull several GB of CUDA packages.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt "torch==2.13.0"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[train,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edgernn demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) edgernn-demo build *.egg-info
