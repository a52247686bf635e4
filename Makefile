# Two commands: `make run` and `make test`. Everything else is set up on the way.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test faults lint format install worker clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Stillhere needs Python 3.11 or newer; set PYTHON=python3.x")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

## Web server on http://127.0.0.1:8000 plus a Celery worker (with beat); Ctrl-C stops both.
ADDRPORT ?= 127.0.0.1:8000
run: $(STAMP)
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py serve $(ADDRPORT)

## ruff, then the whole pytest suite (PostgreSQL/Redis when DATABASE_URL/REDIS_URL are set).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest $(PYTEST_ARGS)

## The fault suite (tests/faults/, and the hostile-input tests tests/faultreport.py names)
## against real PostgreSQL and Redis: kills workers, the
## broker and connections mid-work, and ends with one table of cases, survived, records
## lost (must be 0) and duplicates. Needs both servers; defaults to the local ones.
FAULTS_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
FAULTS_REDIS_URL ?= redis://127.0.0.1:6379/0
faults: $(STAMP)
	@export DATABASE_URL="$${DATABASE_URL:-$(FAULTS_DATABASE_URL)}" REDIS_URL="$${REDIS_URL:-$(FAULTS_REDIS_URL)}"; \
	case "$$DATABASE_URL $$REDIS_URL" in postgres*" redis"*) ;; \
	  *) echo "make faults needs DATABASE_URL=postgres://... and REDIS_URL=redis://..."; exit 2;; esac; \
	$(BIN)/pytest tests --faults $(PYTEST_ARGS)

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## One more Celery worker, without beat: a deployment runs exactly one
## `celery -A config beat` (`make run` already runs a worker with beat).
worker: $(STAMP)
	$(BIN)/celery -A config worker --loglevel INFO

clean:
	rm -rf $(VENV) var
