# botlxc - make up TENANT=default · make down · make status · make test · make bench · make dist
PYTHON ?= python3
VENV ?= .venv
TENANT ?= default
BOTLXC = $(VENV)/bin/botlxc
STAMP = $(VENV)/.installed

.PHONY: up down status plan host test unit live lint bench dist clean

# The venv is rebuilt when the packaging or this file changes.
$(STAMP): setup.cfg setup.py Makefile
	sh scripts/venv.sh $(PYTHON) $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

up: $(STAMP)
	$(BOTLXC) up --tenant $(TENANT)

down: $(STAMP)
	$(BOTLXC) down --tenant $(TENANT)

status: $(STAMP)
	$(BOTLXC) status --tenant $(TENANT)

plan: $(STAMP)
	$(BOTLXC) up --tenant $(TENANT) --dry-run > plan.sh
	@echo "wrote plan.sh" >&2

host: $(STAMP)
	$(BOTLXC) host setup

# Unit tests always; live tests on the real LXD (they skip with a reason where there is
# none, and fail instead when BOTLXC_LIVE=1, as in CI).
test: $(STAMP)
	$(VENV)/bin/python -m pytest

unit: $(STAMP)
	$(VENV)/bin/python -m pytest -m 'not live'

live: $(STAMP)
	$(VENV)/bin/python -m pytest -m live

lint: $(STAMP)
	$(VENV)/bin/python -m flake8 botlxc.py tests scripts

bench: $(STAMP)
	$(VENV)/bin/python scripts/bench.py --services

# One file for minimal hosts: botlxc, its templates and pure-Python dependencies.
dist: $(STAMP)
	sh scripts/dist.sh $(VENV)/bin/python

clean:
	rm -rf $(VENV) dist build *.egg-info .pytest_cache plan.sh
