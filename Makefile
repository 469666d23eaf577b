# coldship: make build | demo | test | bench | lint
GO      ?= go
BIN     := bin/coldship
STATICCHECK_VERSION := v0.8.1

.PHONY: build demo test test-deps bench lint fuzz clean

build:
	$(GO) build -o $(BIN) ./cmd/coldship

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
	rm -rf bin demo
