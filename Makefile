# Two commands on a fresh machine: `make run` and `make test`. Each does its own set-up.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast services-up services-down bench schemas clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## run: the embedded server (OTLP 4318/4317, API and page on 8080) with sample traffic
run: $(STAMP)
	$(VENV)/bin/aitrail serve --demo

## test: every test, real services included
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

schemas: $(STAMP)
	$(PY) -m aitrail.schemas.generate

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) aitrail-data build *.egg-info
