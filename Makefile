# `make test` and `make demo` each create .venv in the repo root if missing, install the project, then run.
VENV      := .venv
PY        := $(VENV)/bin/python
PIP       := $(PY) -m pip
STAMP     := $(VENV)/.installed
# A CPU build of torch 2.13.0 is what we test on; pip falls back to any torch >= 2.4 if it is not available.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: test demo install clean bench

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)" || $(PIP) install -q "torch>=2.4"
	$(PIP) install -q -e ".[test]"
	# The Mistral v0.1 SentencePiece file ships in this wheel; --no-deps keeps numpy as it is.
	$(PIP) install -q --no-deps "mistral-common>=1.5"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/zamba2vl demo

bench: $(STAMP)
	$(VENV)/bin/zamba2vl bench

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
