# The two Quickstart commands are `make demo` and `make test`; each sets up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-busy lint wheel bench screenshot clean stop-embedded

$(STAMP): pyproject.toml requirements.txt requirements-mysql.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@# mysqlclient compiles against libmariadb: only where the headers exist.
	@if pkg-config --exists mysqlclient 2>/dev/null || pkg-config --exists libmariadb 2>/dev/null; then \
		$(PY) -m pip install --quiet -r requirements-mysql.txt; \
	else echo "(MySQL client headers not found: skipping mysqlclient; SQLite only)"; fi
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) manage.py cachepatterns_demo

test: $(STAMP)
	$(PY) -m pytest

# The suite once more with every core kept busy by a CPU hog (.ci/busy): no test
# may depend on how fast the machine is.
test-busy: $(STAMP)
	bash .ci/busy $(PY) -m pytest

# Build the sdist and wheel (python -m build), check the wheel's files, install it
# into a throwaway virtualenv and use it from outside the checkout.
wheel: $(STAMP)
	$(PY) .ci/check_wheel.py

PY_SOURCES := cachepatterns_app tests demo_project bench manage.py .ci

lint: $(STAMP)
	$(VENV)/bin/ruff check $(PY_SOURCES)
	$(VENV)/bin/ruff format --check $(PY_SOURCES)
	$(VENV)/bin/mypy cachepatterns_app

# The alternatives it compares against (django-cacheops, django-cachalot): the bench extra.
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench

# The README's picture of the admin page: the browser test (system Chromium through
# Playwright, a live server, a scripted workload) saves its screenshot there too.
screenshot: $(STAMP)
	CP_SCREENSHOT=docs/admin-stats.png $(PY) -m pytest -q -m browser tests/test_admin_browser.py

stop-embedded:
	-$(PY) -m demo_project.embedded stop

clean: stop-embedded
	rm -rf $(VENV) .embedded-redis demo.sqlite3 tests/test-*.sqlite3
