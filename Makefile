# Berth — make targets. `make help` lists them.
GO      ?= go
BIN     ?= bin
TOOLS   := $(CURDIR)/.tools/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.DEFAULT_GOAL := help
.PHONY: help build run tools test unit e2e conformance lint bench fuzz clean

help: ## list the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-z-]+:.*## /{printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build bin/registry
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/registry ./cmd/registry

run: ## run the registry on embedded defaults (port 5000, ./data)
	$(GO) run ./cmd/registry serve

tools: ## install the pinned test tools into .tools/bin (idempotent)
	bash scripts/tools.sh

test: tools lint ## everything CI runs: lint, unit tests (race), e2e with real clients
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /test/e2e)
	$(GO) test -count=1 -timeout 30m ./test/e2e/...

unit: ## unit and in-process tests only
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /test/e2e)

e2e: tools ## end-to-end tests: conformance suite, real clients, crash safety
	$(GO) test -count=1 -timeout 30m -v ./test/e2e/...

conformance: tools ## the OCI conformance suite only
	$(GO) test -count=1 -v -run TestConformance ./test/e2e/...

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

bench: tools ## benchmarks (throughput vs plain HTTP, small images, RSS)
	$(GO) test -run '^$$' -bench . -benchtime 1x ./pkg/...
	$(GO) run ./test/bench

FUZZTIME ?= 1m
fuzz: ## run each fuzz target for FUZZTIME (default 1m)
	$(GO) test -run '^$$' -fuzz '^FuzzParseAuthorization$$' -fuzztime $(FUZZTIME) ./pkg/auth
	$(GO) test -run '^$$' -fuzz '^FuzzVerifyToken$$' -fuzztime $(FUZZTIME) ./pkg/auth

clean: ## remove build outputs
	rm -rf $(BIN)
