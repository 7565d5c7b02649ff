# etcdimg — the two commands are `make up` and `make test`.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
export CGO_ENABLED := 0
GO      ?= go
OUT     ?= etcdimg-out
NODES   ?= 3
GOFLAGS_BUILD := -trimpath -ldflags=-s\ -w

# Debian packages the build and the tests use, by the command that proves
# each is installed.
HOST_TOOLS := openssl:openssl

.PHONY: all build up test bench deps clean
all: build

## deps: install what a fresh Debian machine is missing (as root).
deps:
	@command -v $(GO) >/dev/null || { echo "make: Go is missing: install Go 1.26 at /usr/local/go"; exit 1; }
	@missing=""; for t in $(HOST_TOOLS); do command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "make: installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@$(GO) mod download

## build: bin/etcdimg (the host CLI) and bin/etcdnode (the in-image multi-call binary).
build:
	$(GO) build $(GOFLAGS_BUILD) -o bin/etcdimg ./cmd/etcdimg
	$(GO) build $(GOFLAGS_BUILD) -o bin/etcdnode ./cmd/etcdnode

## up: from a fresh machine, install, build and render a cluster into $(OUT).
up: deps build
	bin/etcdimg render --out $(OUT) $(if $(wildcard $(OUT)/etcdimg.yaml),,--nodes $(NODES))

## test: every test, unit and end to end.
test: deps
	@bad=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
		if [ -n "$$bad" ]; then echo "gofmt needed: $$bad"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 25m ./...

clean:
	rm -rf bin
