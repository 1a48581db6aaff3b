# Slipway. `make demo` shows the agent at work; `make test` runs every test.
# Both install what they need (see .ci/deps) and start and stop the services
# they use (see .ci/with-services).

SHELL := /bin/bash
GOLANGCI_LINT_VERSION := v2.15.0
CACHE := $(CURDIR)/.cache
GOLANGCI_LINT := $(CACHE)/bin/golangci-lint-$(GOLANGCI_LINT_VERSION)
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
AGENT_LDFLAGS := -s -w -X main.version=$(VERSION)
AGENT_PLATFORMS := linux/amd64 linux/arm64 windows/amd64
# Each fuzz target runs this many inputs in `make test`: a count, not a
# duration, because Go 1.26's fuzzer can fail a target with a bare "context
# deadline exceeded" when a duration ends on a loaded machine (golang/go#75804).
FUZZTIME ?= 20000x

# Node 22 from .cache/node where .ci/deps put it, else the machine's.
NODE := $(firstword $(wildcard $(CACHE)/node/node_modules/node-linux-*/bin/node) node)
# The functions, each a linux/arm64 bootstrap in bin/lambda/<name>.zip.
FUNCTIONS := $(notdir $(wildcard functions/*))

# The CDK app's tests and `cdk synth` start jsii's Node process: Node 22.
# The CDK CLI's telemetry and notices would call out: both are off.
CDK_ENV := PATH=$(if $(filter node,$(NODE)),,$(dir $(NODE)):)$$PATH CDK_DISABLE_CLI_TELEMETRY=true

.PHONY: all build host deps test unit wine fuzz lint asl bench demo local lambdas synth clean

all: build

deps:
	@.ci/deps
	@if go list -m -f '{{if not (or .Main .Indirect .Dir)}}missing{{end}}' all 2>/dev/null | grep -q missing; then \
	  echo "deps: downloading the Go modules (a first run fetches a few hundred MB)"; fi
	@go mod download

build:
	@mkdir -p bin
	@for p in $(AGENT_PLATFORMS); do \
	  os=$${p%/*}; arch=$${p#*/}; ext=; [ $$os = windows ] && ext=.exe; \
	  echo "build bin/slipway-agent-$$os-$$arch$$ext"; \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch go build -trimpath -ldflags '$(AGENT_LDFLAGS)' \
	    -o bin/slipway-agent-$$os-$$arch$$ext ./agent || exit 1; \
	done
	@CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o bin/slipway ./cmd/slipway
	@echo "build bin/slipway"

# lambdas: each function as Lambda's provided.al2023 runtime wants it: a
# static linux/arm64 binary named bootstrap, alone in a zip.
lambdas:
	@mkdir -p bin/lambda
	@for f in $(FUNCTIONS); do \
	  echo "build bin/lambda/$$f.zip"; \
	  mkdir -p bin/lambda/$$f && \
	  CGO_ENABLED=0 GOOS=linux GOARCH=arm64 go build -trimpath -tags lambda.norpc -ldflags '-s -w' \
	    -o bin/lambda/$$f/bootstrap ./functions/$$f || exit 1; \
	  (cd bin/lambda/$$f && rm -f ../$$f.zip && zip -q -X ../$$f.zip bootstrap) || exit 1; \
	done

$(GOLANGCI_LINT):
	@mkdir -p $(CACHE)/bin
	GOBIN=$(CACHE)/bin go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	@mv $(CACHE)/bin/golangci-lint $@

lint: $(GOLANGCI_LINT)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: the files above need formatting"; exit 1; }
	go vet ./...
	GOOS=windows go vet ./agent/... ./internal/pki/...
	$(GOLANGCI_LINT) run ./...
	GOOS=windows $(GOLANGCI_LINT) run ./agent/...

# test: every test, with the race detector, against a real Docker engine, then
# each fuzz target briefly, then the linters.
test: deps build lambdas
	.ci/with-services $(MAKE) --no-print-directory unit fuzz
	$(MAKE) --no-print-directory asl lint synth wine

# unit: every package with the race detector but the CDK app's, whose
# generated bindings take minutes to compile and hold no goroutines of ours;
# it runs beside them, without it.
unit:
	@set -e; \
	$(CDK_ENV) go test -count=1 ./infra/... > $(CACHE)/infra-test.log 2>&1 & infra=$$!; \
	go test -race -count=1 $$(go list ./... | grep -v '/infra$$') || { wait $$infra; cat $(CACHE)/infra-test.log; exit 1; }; \
	if wait $$infra; then cat $(CACHE)/infra-test.log; else cat $(CACHE)/infra-test.log; exit 1; fi

# wine: the agent's Windows build under Wine (.ci/wine): the tests of its
# packages that hold no Unix shell scripts. agent/winetest, in unit, drives
# the whole Windows agent there. The wine tag brings internal/winefix, which
# reaches into Go's runtime library (hence -checklinkname=0).
WINE_PKGS := ./agent ./agent/agentapi ./agent/executor ./agent/mask ./agent/reports ./agent/steplog

wine:
	GOOS=windows go test -count=1 -tags wine -ldflags=-checklinkname=0 -exec $(CURDIR)/.ci/wine $(WINE_PKGS)

fuzz:
	@for target in $$(grep -rhoE '^func Fuzz[A-Za-z0-9_]+' --include='*_test.go' . | sed 's/^func //' | sort -u); do \
	  pkg=$$(grep -rlE "^func $$target\(" --include='*_test.go' . | head -1 | xargs dirname); \
	  echo "fuzz $$target in $$pkg for $(FUZZTIME)"; \
	  go test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	done

# asl: the state machine file, its placeholders filled, checked by
# asl-validator (pinned in package-lock.json).
asl:
	@sed -E 's/\$$\{([A-Za-z]+)FunctionArn\}/arn:aws:lambda:us-east-1:000000000000:function:slipway-\1/g' \
	  statemachine/stage.asl.json > $(CACHE)/stage.asl.json
	$(NODE) node_modules/.bin/asl-validator --json-path $(CACHE)/stage.asl.json

# synth: the CloudFormation template of cdk.json's deployment, offline (no
# lookups, no credentials), with cdk-nag's AwsSolutions checks; into cdk.out.
synth: deps build lambdas
	$(CDK_ENV) node_modules/.bin/cdk synth --no-lookups --no-notices --quiet

# bench: every benchmark once, one package at a time (so none measures on a
# machine loaded by another); each prints `BENCH <name> <value> <unit>`.
# bench: only the packages that have benchmarks, so it never compiles the
# CDK app's test binary (minutes) to run none.
BENCH_PKGS = $(shell grep -rl --include='*_test.go' -E '^func Benchmark' --exclude-dir=node_modules --exclude-dir=.cache . | xargs -r -n1 dirname | sort -u)

bench: deps build
	.ci/with-services go test -p 1 -run '^$$' -bench . -benchtime 1x -count 1 $(BENCH_PKGS) | tee $(CACHE)/bench.txt | grep -E '^(BENCH|FAIL|ok|---)'

# demo builds only what it runs (this machine's agent and the command), not
# every platform's agent, and says so: a first build compiles the AWS SDK.
HOST_AGENT := bin/slipway-agent-$(shell go env GOOS)-$(shell go env GOARCH)

demo: deps host
	.ci/with-services ./bin/slipway demo --agent ./$(HOST_AGENT)

host:
	@mkdir -p bin
	@echo "demo: building this machine's agent and the slipway command (a first build compiles the AWS SDK: a few minutes)"
	@CGO_ENABLED=0 go build -trimpath -ldflags '$(AGENT_LDFLAGS)' -o $(HOST_AGENT) ./agent
	@CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o bin/slipway ./cmd/slipway

# local: slipway local with its defaults until Ctrl-C (it starts DynamoDB
# Local and local-kms itself).
local: deps host
	./bin/slipway local

clean:
	rm -rf bin cdk.out
