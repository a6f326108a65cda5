# walship — make demo, make test (see README.md)
SHELL := /bin/bash
SWIFT ?= swift
PG_BINDIR ?= $(shell pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)
PREFIX ?= /usr/local
export PG_BINDIR

.PHONY: all deps build release test unit integration demo install clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

# Unit and integration tests on one debug build. Integration tests start their own PostgreSQL 15
# clusters on free loopback ports; strays from an interrupted run are removed before and after.
test: deps
	@scripts/kill-test-strays.sh
	$(SWIFT) build --build-tests
	@set -o pipefail; status=0; $(SWIFT) test --skip-build 2>&1 | tee test-output.log || status=$$?; \
		scripts/kill-test-strays.sh; exit $$status

unit: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --skip IntegrationTests

integration: deps
	@scripts/kill-test-strays.sh
	$(SWIFT) build --build-tests
	@status=0; $(SWIFT) test --skip-build --filter IntegrationTests || status=$$?; scripts/kill-test-strays.sh; exit $$status

# The ship path end to end on loopback, with a local primary, in synchronous mode.
demo: release
	@WALSHIP_BIN=$(CURDIR)/.build/release/walship scripts/demo.sh

install: release
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 .build/release/walship $(DESTDIR)$(PREFIX)/bin/walship

clean:
	rm -rf .build test-output test-output.log
