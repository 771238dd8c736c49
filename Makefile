PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench lint clean

# The editable install also compiles service/store/_copyleaf.c (optional: without a compiler
# the install goes on, and `auditq verify` takes its Python path): a change to it reinstalls.
$(STAMP): pyproject.toml service/store/_copyleaf.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[server,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/auditq run $(if $(DEMO),--demo,)

# The console's browser tests drive Debian's Chromium (never a browser of `playwright install`):
# installed here when missing, as root with apt-get; elsewhere those tests skip and say why.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "could not install chromium: the console's browser tests will skip"; \
	else echo "no $(CHROMIUM): the console's browser tests will skip"; fi

# The syslog destination's tests deliver into Debian's rsyslog (imtcp, and TLS through its
# GnuTLS driver): installed here when missing, as root with apt-get; elsewhere they skip.
RSYSLOG_TLS := /usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so
$(RSYSLOG_TLS):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq rsyslog rsyslog-gnutls) \
		|| echo "could not install rsyslog: the syslog destination's tests will skip"; \
	else echo "no rsyslog with TLS: the syslog destination's tests will skip"; fi

test: $(STAMP) | $(CHROMIUM) $(RSYSLOG_TLS)
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The Node client's tests (tests/producer/test_node_client.py) need its dev dependencies:
# installed from the npm registry when missing or when the lock file changed.
NODE_CLIENT := clients/node
NODE_DEPS := $(NODE_CLIENT)/node_modules/.package-lock.json
$(NODE_DEPS): $(NODE_CLIENT)/package-lock.json
	@if command -v npm >/dev/null; then \
		cd $(NODE_CLIENT) && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "no npm: the Node client's tests will skip"; fi
test: $(NODE_DEPS)

# Side-by-side benchmarks (not part of `make test`): bench/results/latest.{json,md,png}.
# QUICK=1: smaller counts, under 5 minutes. Needs Node >= 18 and npm for the BullMQ baseline.
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[server,dev,bench]'
	cd bench/node && npm install --no-audit --no-fund --loglevel=error
	$(BIN)/python -m bench.run $(if $(QUICK),--quick,)

lint: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check service workers tests bench
	$(BIN)/ruff format --check service workers tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
