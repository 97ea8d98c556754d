# MedEase developer commands. `make run` and `make test` work on a fresh machine with
# only Python 3.11: they create .venv and install what they need.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
export PORT
# Links in e-mails point at the web process. honcho gives each process its own PORT (the
# worker's is not the web's), so the web's address is fixed here for all of them.
SITE_URL ?= http://127.0.0.1:$(PORT)
export SITE_URL
# honcho SIGKILLs whatever still runs 5 s after Ctrl-C (a constant, no option). Each process
# stops by itself within 10 s (docs/operations.md, "Stopping"), so allow that instead.
HONCHO := $(BIN)/python -c 'import honcho.manager, honcho.command; \
	honcho.manager.KILL_WAIT = 10; honcho.command.main()'

.PHONY: run test lint format migrate seed bench clean install install-dev \
	cluster cluster-stop cluster-status cluster-smoke browser-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## run: install, migrate, seed the demo data, and start web + worker + beat (Procfile)
run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seed_demo
	@echo ""
	@echo "MedEase is starting on http://127.0.0.1:$(PORT)/"
	@echo "  API          http://127.0.0.1:$(PORT)/api/v1/   (docs: /api/docs/)"
	@echo "  Staff admin  http://127.0.0.1:$(PORT)/admin/"
	@echo "  Health       http://127.0.0.1:$(PORT)/health/ready"
	@echo "  Demo logins  staff@, provider1..3@, patient1..5@demo.medease.test"
	@echo "  Password     medease-demo-pass"
	@echo "  Stop with Ctrl-C."
	@echo ""
	PATH="$(CURDIR)/$(BIN):$$PATH" $(HONCHO) start web worker beat audit

## test: lint, migration check and the whole pytest suite
test: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python manage.py makemigrations --check --dry-run
	MEDEASE_VAR_DIR=$${MEDEASE_VAR_DIR:-$(CURDIR)/var/test} $(BIN)/python -m pytest $(PYTEST_ARGS)

## browser-deps: Debian's chromium and chromedriver, for the real-browser console tests (root)
browser-deps:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		echo "chromium and chromedriver are installed"; \
	else \
		DEBIAN_FRONTEND=noninteractive apt-get update && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
			chromium chromium-driver; \
	fi

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

migrate: install
	$(BIN)/python manage.py migrate --noinput

seed: migrate
	$(BIN)/python manage.py seed_demo

## bench: every hot endpoint as a ratio to a bare Django view (docs/performance.md);
## needs DATABASE_URL (a PostgreSQL server); BENCH_ARGS=--quick for a smoke run
bench: install-dev
	$(BIN)/python bench/http_floor.py $(BENCH_ARGS)

## cluster: nginx + two web nodes + a streaming replica + Redis + worker + beat, on this machine
cluster: install-dev
	$(BIN)/python scripts/cluster/cluster.py up

## cluster-stop: stop everything `make cluster` started (the database is kept)
cluster-stop:
	$(PYTHON) scripts/cluster/cluster.py down

cluster-status:
	$(PYTHON) scripts/cluster/cluster.py status

## cluster-smoke: through nginx, book and chat with the two participants on different nodes
cluster-smoke: install-dev
	$(BIN)/python scripts/cluster/smoke.py

## load: a clinic day under Locust through `make cluster` (run that first): steps of users
## until one fails p95 < 200 ms, p99 < 500 ms, errors < 0.1%; LOAD_ARGS="--users 200" for one run
.PHONY: load
load: install-dev
	$(BIN)/python bench/load/run.py $(LOAD_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
