# coldship: make build | man | demo | test | bench | lint
GO      ?= go
BIN     := bin/coldship
STATICCHECK_VERSION := v0.8.1
# The version is git describe's; a tree without git history says so.
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)
COMMIT  := $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)

.PHONY: build man demo test test-deps crashtest bench lint fuzz clean

# A static binary: no cgo, so it runs on any Linux of the same architecture.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/coldship
	@if ldd $(BIN) >/dev/null 2>&1; then echo "$(BIN) is dynamically linked"; exit 1; fi
	@echo "$(BIN): static (CGO_ENABLED=0), $$($(GO) version -m $(BIN) | awk 'NR==1 {print $$2} $$1=="build" && $$2 ~ /^CGO_ENABLED=/ {print $$2}' | paste -sd' '), version $(VERSION)"

# Man pages from the commands' help, in man/man1.
man: build
	./$(BIN) man man/man1

# Builds, makes a sample VM disk with holes and data, ships it sealed to a
# local destination, verifies, restores it and shows it is identical.
demo: build
	./scripts/demo.sh

# Installs what the tests need (Debian packages, pinned Go tools), then runs
# every test with the race detector.
test: test-deps
	$(GO) test -race -timeout 60m ./...

test-deps:
	./scripts/install-test-deps.sh

# The crash-consistency suite at full size (make test runs one point per
# cell): CRASHTEST_POINTS seeded kill points per transport, command and
# signal, every damage everywhere, server restarts; prints the table the
# README's Reliability section shows. The whole log: bench/out/crashtest.log.
CRASHTEST_POINTS ?= 20
crashtest: test-deps
	@mkdir -p bench/out
	CI=true CRASHTEST_POINTS=$(CRASHTEST_POINTS) $(GO) test -count=1 -timeout 180m -v ./internal/crashtest/ \
		> bench/out/crashtest.log 2>&1; rc=$$?; sed -n '/^crash-consistency points/,$$p' bench/out/crashtest.log; \
		grep -E '^(--- FAIL|FAIL|ok)' bench/out/crashtest.log; exit $$rc

# Benchmarks against cp, age, openssl (and the peers of each transport).
bench: build
	./scripts/install-test-deps.sh --bench
	./scripts/bench.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

# A short run of every fuzz target.
fuzz:
	./scripts/fuzz.sh 30s

clean:
	rm -rf bin demo man
