# walship — make demo, make test (see README.md)
SHELL := /bin/bash
SWIFT ?= swift
PG_BINDIR ?= $(shell pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)
PREFIX ?= /usr/local
export PG_BINDIR
# The build `walship --version` shows: the commit (-dirty with uncommitted changes) and the date, UTC (or
# SOURCE_DATE_EPOCH's). Package.swift passes it to the CBuildIdentity target; a plain `swift build` says
# "unknown". Evaluated once; `make release WALSHIP_BUILD="..."` sets it from outside.
ifeq ($(origin WALSHIP_BUILD),undefined)
WALSHIP_BUILD := $(shell git describe --always --dirty --abbrev=12 2>/dev/null || echo unknown) $(shell date -u $(if $(SOURCE_DATE_EPOCH),-d @$(SOURCE_DATE_EPOCH)) +%Y-%m-%d)
endif
export WALSHIP_BUILD

.PHONY: all deps deps-build build release test unit integration demo demo-switchover bench install package manual clean fuzz fuzz-seeds drills simulate lint format

all: build

# Everything the tests, demos and benchmark need (PostgreSQL 15, a browser for the dashboard test, ...).
deps:
	@scripts/install-deps.sh

# Only what building walship needs (libpq and liblz4 with their headers): what make install pulls in.
deps-build:
	@scripts/install-deps.sh --build

build: deps
	$(SWIFT) build

# The release binary carries the Swift runtime and Foundation (statically linked): hosts need only libpq5,
# liblz4-1 and lz4, and each process maps about 3.5 MiB less than with the shared runtime libraries.
# Linked by lld without exporting the executable's own symbols (the static runtime's link arguments ask for
# that; nothing loads symbols from walship) and with packed relative relocations (glibc 2.36+): the loader
# then no longer touches 2.3 MiB of symbol tables and 3 MiB of relocations, ~5.5 MiB less RSS per process.
RELEASE_LINK_FLAGS = -Xswiftc -use-ld=lld -Xlinker --no-export-dynamic -Xlinker -z -Xlinker pack-relative-relocs
release: deps-build
	$(SWIFT) build -c release --static-swift-stdlib $(RELEASE_LINK_FLAGS)

# Unit and integration tests on one debug build. Integration tests start their own PostgreSQL 15
# clusters on free loopback ports; strays from an interrupted run are removed before and after. Unit tests
# run first, on their own: the integration tests block the concurrency pool's threads (one per core) while
# they wait on PostgreSQL, and async unit tests running beside them could starve until their time limit. The
# object-store suites talk to the store from the test process through async-http-client, so they run last, on
# their own and one at a time, for the same reason (beside the others, or each other, their reads timed out
# waiting for a pool thread, and a poll for an upload in flight missed it).
ASYNC_SUITES = ArchiveShipTests ArchiveRestoreTests ArchiveVerifyTests ArchiveBucketRetentionTests ArchiveKilledUploadTests S3ClientTests
test: deps lint
	@scripts/kill-test-strays.sh
	$(SWIFT) build --build-tests
	@$(MAKE) --no-print-directory manual
	@set -o pipefail; status=0; \
		( $(SWIFT) test --skip-build --skip IntegrationTests; unit=$$?; \
		  $(SWIFT) test --skip-build --filter IntegrationTests $(foreach s,$(ASYNC_SUITES),--skip $(s)); integration=$$?; \
		  $(SWIFT) test --skip-build --no-parallel $(foreach s,$(ASYNC_SUITES),--filter IntegrationTests.$(s)); store=$$?; \
		  [ $$unit -eq 0 ] && [ $$integration -eq 0 ] && [ $$store -eq 0 ] ) 2>&1 | tee test-output.log || status=$$?; \
		scripts/kill-test-strays.sh; [ $$status -eq 0 ] || scripts/test-failures.sh test-output.log; exit $$status

# House style: .swift-format (swift format ships with the toolchain). `make format` rewrites in place.
FORMAT_PATHS = Package.swift Sources Tests Integration
lint:
	$(SWIFT) format lint --strict --recursive --parallel $(FORMAT_PATHS)

format:
	$(SWIFT) format --in-place --recursive --parallel $(FORMAT_PATHS)

unit: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --skip IntegrationTests

integration: deps
	@scripts/kill-test-strays.sh
	$(SWIFT) build --build-tests
	@status=0; $(SWIFT) test --skip-build --filter IntegrationTests $(foreach s,$(ASYNC_SUITES),--skip $(s)) || status=$$?; \
		$(SWIFT) test --skip-build --no-parallel $(foreach s,$(ASYNC_SUITES),--filter IntegrationTests.$(s)) || status=$$?; \
		scripts/kill-test-strays.sh; exit $$status

# The ship path end to end on loopback, with a local primary, in synchronous mode.
demo: deps release
	@WALSHIP_BIN=$(CURDIR)/.build/release/walship scripts/demo.sh

demo-switchover: deps release
	@WALSHIP_BIN=$(CURDIR)/.build/release/walship scripts/demo-switchover.sh

# The performance benchmark: walship against pg_receivewal and native streaming/synchronous standbys on
# its own PostgreSQL 15 clusters, ratios measured in one run; the table is printed and written to
# bench/results/. Sizes and durations: BENCH_* variables (docs/performance.md), e.g. BENCH_WAL_MB=1024.
bench: deps release
	@WALSHIP_BIN=$(CURDIR)/.build/release/walship scripts/bench.py

# The fault drills, long: ROUNDS rounds of every fault (kill -9 of each process, link cut/stall/slow, failed
# journal fdatasync, full disk) under load from 8 sessions, then promotion and the check that no acknowledged
# commit is lost; prints the table. SEED repeats an order.
ROUNDS ?= 50
drills: deps
	@scripts/kill-test-strays.sh
	$(SWIFT) build --build-tests
	@status=0; WALSHIP_DRILL_ROUNDS=$(ROUNDS) $(if $(SEED),WALSHIP_DRILL_SEED=$(SEED)) $(SWIFT) test --skip-build \
		--filter FaultDrillTests || status=$$?; scripts/kill-test-strays.sh; exit $$status

# The seeded fault simulation, long: STEPS steps of WAL, acknowledgements, failovers, injected I/O failures,
# crashes and restarts through the real spool on the in-memory file system, for SEED (else 8 seeds from the
# clock, printed). `make test` runs it briefly.
STEPS ?= 20000
simulate: deps
	$(SWIFT) build --build-tests
	WALSHIP_SIM_STEPS=$(STEPS) $(if $(SEED),WALSHIP_SIM_SEED=$(SEED)) $(SWIFT) test --skip-build --filter FaultSimulationTests

# Coverage-guided fuzzing (libFuzzer, AddressSanitizer) of the frame decoder, the standby endpoint's message decoder and
# WAL page validation. The instrumented build lives only in .build-fuzz; new crashes land in
# Fuzz/crashes/TARGET/ and `make test` replays them (and the corpus) on the normal build.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= frames frontend walpage
fuzz: deps
	$(SWIFT) build -c release --build-path .build-fuzz --product walship-fuzz -Xswiftc -sanitize=fuzzer,address -Xswiftc -use-ld=lld \
		-Xswiftc -DFUZZING
	@set -eo pipefail; for t in $(FUZZ_TARGETS); do \
		mkdir -p Fuzz/crashes/$$t .build-fuzz/corpus/$$t; \
		echo "== fuzzing $$t for $(FUZZ_SECONDS) s"; \
		WALSHIP_FUZZ_TARGET=$$t .build-fuzz/release/walship-fuzz .build-fuzz/corpus/$$t Fuzz/corpus/$$t \
			-max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
			-artifact_prefix=Fuzz/crashes/$$t/ -print_final_stats=1 2>&1 | tail -15; \
	done

# Rewrites the seed corpus from the formats' encoders.
fuzz-seeds: build
	.build/debug/walship-fuzz seeds Fuzz/corpus

install: release
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 .build/release/walship $(DESTDIR)$(PREFIX)/bin/walship

# Man pages for walship and every subcommand (walship.1, walship.send.1, …) from swift-argument-parser's
# generator, in .build/manual. The generator runs the debug build (the pages are the same for any build).
MANUAL_DIR = .build/manual
manual:
	@$(SWIFT) package plugin generate-manual --configuration debug --multi-page --date $(lastword $(WALSHIP_BUILD)) \
		--authors "walship contributors" > .build/manual.log 2>&1 || { cat .build/manual.log; exit 1; }
	@rm -rf $(MANUAL_DIR) && mkdir -p $(MANUAL_DIR)
	@cp .build/plugins/GenerateManual/outputs/walship/*.1 $(MANUAL_DIR)/

# The Debian package: the release binary at /usr/bin/walship, the systemd units (disabled), example config in
# /etc/walship, man pages, bash and zsh completions, the docs. Its path is the last line printed.
package: release manual
	@scripts/package-deb.sh .build/release/walship $(MANUAL_DIR) .build/package

clean:
	rm -rf .build .build-fuzz test-output test-output.log
