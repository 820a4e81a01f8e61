# vidiff developer tasks. `make test` is all a fresh machine needs.
PYTHON      ?= python3
VENV        ?= .venv
# CPU wheel by default; CUDA users: make TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.vidiff-installed

.PHONY: venv test test-all bench clean

venv: $(STAMP)

# torch goes in first, so nothing pulls a multi-GB CUDA build as a dependency.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
