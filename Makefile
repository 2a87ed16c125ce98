# hashtagkit: `make demo` and `make test` work on a fresh clone (they create .venv and install).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo

.PHONY: install test lint demo clean bench-extract

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

# The main job end to end on the embedded synthetic data, ending in a results table.
demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/hashtagkit prepare demo -o $(DEMO)/demo.zarr --n 2000 --seed 0
	$(BIN)/hashtagkit info $(DEMO)/demo.zarr
	$(BIN)/hashtagkit fit $(DEMO)/demo.zarr --head popularity -o $(DEMO)/runs/popularity
	$(BIN)/hashtagkit evaluate $(DEMO)/runs/popularity

clean:
	rm -rf $(DEMO) .pytest_cache build *.egg-info

# Benchmarks: each writes a Markdown table under benchmarks/results/ (machine and versions included).
bench-extract: $(STAMP)
	$(BIN)/python benchmarks/extract_throughput.py --n 64
