# `make test` and `make demo` each create .venv in the repo root if missing, install the project, then run.
VENV      := .venv
PY        := $(VENV)/bin/python
PIP       := $(PY) -m pip
STAMP     := $(VENV)/.installed
# A CPU build of torch 2.13.0 is what we test on; pip falls back to any torch >= 2.4 if it is not available.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test demo install clean bench browser nano

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

# The web-page test drives Debian's Chromium through its driver (browser downloads cannot reach their servers).
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  ($(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)

test: $(STAMP) browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/zamba2vl demo

# Retrain the shipped nano model: its two stages in turn (README, "The nano model"; about an hour on 2 cores), each
# resumed from its newest checkpoint if one exists (so a stopped `make nano` continues, and a finished stage is not
# run again), then the last checkpoint without its training state into NANO_OUT. Evaluate that folder with
# `zamba2vl eval --model $(NANO_OUT) --bench synthetic --synthetic-rows 400`; copy it over src/zamba2vl/assets/nano
# to ship it.
NANO_STAGES := two_stage_vision two_stage
NANO_OUT    ?= runs/nano_model
nano: $(STAMP)
	for stage in $(NANO_STAGES); do \
	  $(VENV)/bin/zamba2vl train --config configs/train/$$stage.yaml --resume || exit 1; \
	done
	rm -rf $(NANO_OUT) && mkdir -p $(NANO_OUT)
	last=runs/two_stage/checkpoints/$$(cat runs/two_stage/checkpoints/latest) && \
	  cp $$last/* $(NANO_OUT)/ && rm -f $(NANO_OUT)/trainer_state.pt $(NANO_OUT)/rng-rank*.pt
	cp runs/two_stage/loss.jsonl $(NANO_OUT)/train_loss.jsonl
	cp runs/two_stage/loss.png $(NANO_OUT)/train_loss.png
	@echo "nano model in $(NANO_OUT)"

bench: $(STAMP)
	$(VENV)/bin/zamba2vl bench

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
