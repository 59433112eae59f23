# Quick start: `make demo` and `make test`. Both create ./.venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean venv pi-check

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

# Not part of `make test`: Debian bookworm arm64 and armhf userlands under qemu-user, the
# wheel installed and run in each (needs root; see benchmarks/pi_check.py). PI_CHECK_ARGS:
# e.g. --fresh (rebuild the cached userlands), --only armhf.
pi-check: $(STAMP)
	$(BIN)/python benchmarks/pi_check.py $(PI_CHECK_ARGS)

clean:
	rm -rf $(VENV) edgernn-demo build *.egg-info
