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

## test: every test, real services included (Kafka and OpenSearch are started for the run
## and stopped afterwards, unless they were already running)
test: $(STAMP) browser
	@started=0; \
	if ! bash deploy/local/services.sh status >/dev/null 2>&1; then \
	  bash deploy/local/services.sh up || exit 1; started=1; fi; \
	$(PY) -m pytest -q -p no:cacheprovider; status=$$?; \
	if [ $$started = 1 ]; then bash deploy/local/services.sh down; fi; \
	exit $$status

## services-up / services-down: native Kafka (127.0.0.1:9092) and OpenSearch (http://127.0.0.1:9200)
services-up:
	bash deploy/local/services.sh up

services-down:
	bash deploy/local/services.sh down

## browser: Debian's Chromium and the Thai and CJK fonts for tests/web (Playwright drives it;
## no browser is ever downloaded)
.PHONY: browser
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  apt-get update && apt-get install -y --no-install-recommends chromium fonts-noto-cjk fonts-thai-tlwg; \
	fi

schemas: $(STAMP)
	$(PY) -m aitrail.schemas.generate

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) aitrail-data build *.egg-info
