# Two commands matter: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torchxrayvision ships the OpenI reports and label CSVs we read in place; its own
# dependencies (it pulls in model downloads) are not needed, hence --no-deps.
XRV := torchxrayvision==1.5.7

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test venv lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(XRV)
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/medgrain demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check medgrain tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
