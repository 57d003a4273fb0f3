# The two commands:  `make demo` (the main job) and `make test` (the test suite).
# Each builds .venv from nothing when it is missing and is quick when it is there.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
OUT     ?= demo_out

.PHONY: demo test test-slow test-all lint format bench gradcheck clean venv browser

venv: $(STAMP)

# torch first and pinned: the CPU build lies on disk; an unpinned torch would pull CUDA.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/captionlab demo --out $(OUT)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -q || { rc=$$?; [ $$rc -eq 5 ] && echo 'pytest: no tests collected' || exit $$rc; }

# Debian's Chromium, for the headless-browser test of `captionlab serve` (CI installs it here;
# nothing downloads a browser of its own). Needs root, as CI is.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

# The tests marked slow alone (the notebooks that train LSTM, attention and Transformer
# captioners, whole-model checks at larger sizes): CI runs them after `make test`.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow || { rc=$$?; [ $$rc -eq 5 ] && echo 'pytest: no slow tests collected' || exit $$rc; }

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

gradcheck: $(STAMP)
	$(BIN)/captionlab gradcheck

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_layers.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
