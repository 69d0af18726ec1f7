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

# Every fuzz target, as package:Name. Their seeds (f.Add and testdata/fuzz)
# run as ordinary tests in `make test`.
FUZZ_TARGETS := \
	./pkg/auth:FuzzParseAuthorization \
	./pkg/auth:FuzzVerifyToken \
	./pkg/api:FuzzParseRoute \
	./pkg/api:FuzzParseContentRange \
	./pkg/registry:FuzzValidName \
	./pkg/registry:FuzzParseReference \
	./pkg/registry:FuzzParseManifest \
	./pkg/config:FuzzConfigParse
FUZZTIME ?= 1m
# Time spent shrinking each new input; go test's default (1m) would eat a
# short run.
FUZZMINIMIZETIME ?= 10s
fuzz: ## run each fuzz target for FUZZTIME (default 1m)
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "== $${t#*:} ($${t%%:*}) for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$${t#*:}\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) $${t%%:*}; \
	done

clean: ## remove build outputs
	rm -rf $(BIN)
