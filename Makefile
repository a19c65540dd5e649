# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test test-fast demo bench clean

venv: $(STAMP)

# torch is pinned and installed first so pip never resolves an unpinned (CUDA) build.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

# Two workers, a test file each at a time (each worker starts its own broker when a file needs one):
# the broker tests mostly wait on group joins and session timeouts, so two overlap well.
test: venv
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-fast: venv
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow and not kafka and not skab"

demo: venv
	$(BIN)/stream-ae demo

bench: venv
	$(BIN)/stream-ae bench backfill --json bench-out/backfill.json

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
