# The two commands a newcomer needs: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install demo test lint clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: a bare `torch` requirement would pull the CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/nmtkit demo

test: install
	$(VENV)/bin/ruff check nmtkit tests benchmarks
	$(PY) -m pytest -q -n 2  # two workers: the suite is mostly single-threaded

clean:  # what the demo and the tests made; never your own runs or prepared data
	rm -rf demo-data runs/demo-rnn-* runs/demo-transformer-* runs/demo-vit .pytest_cache .ruff_cache
