# hypeman — run OCI images as VMs.  `make run` and `make test` do everything on a fresh Debian 12 host.
SHELL := /bin/bash
GO ?= go
BIN := bin
DATA_DIR ?= /var/lib/hypeman
export HYPEMAN_KERNEL_DIR ?= $(DATA_DIR)/system/kernel
# Tests find the guest init here instead of rebuilding it per package.
export HYPEMAN_INIT_BINARY ?= $(CURDIR)/$(BIN)/hypeman-init
OAPI_CODEGEN := $(GO) run github.com/oapi-codegen/oapi-codegen/v2/cmd/oapi-codegen@v2.8.2
TEST_TIMEOUT ?= 40m

.PHONY: all setup build init run test test-unit generate bench lint clean example-image

all: build

setup:
	@scripts/setup.sh

# The guest init must be static: it runs as PID 1 in a VM with no libc.
init:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/hypeman-init ./cmd/hypeman-init

build: init
	$(GO) build -o $(BIN)/hypemand ./cmd/hypemand
	$(GO) build -o $(BIN)/hypeman ./cmd/hypeman
	$(GO) build -o $(BIN)/hypeman-token ./cmd/hypeman-token

run: setup build
	$(BIN)/hypemand --data-dir $(DATA_DIR)

# Every test, unit and integration (integration tests boot real VMs under QEMU).
test: setup init
	$(GO) vet ./...
	$(GO) test -timeout $(TEST_TIMEOUT) -count=1 ./... 2>&1 | tee /tmp/hypeman-test.log | grep -v '^=== \(RUN\|PAUSE\|CONT\)'; exit $${PIPESTATUS[0]}

test-unit:
	$(GO) test -short -count=1 ./...

generate:
	$(OAPI_CODEGEN) -config internal/api/gen/oapi-codegen.yaml openapi.yaml
	$(OAPI_CODEGEN) -config internal/api/client/oapi-codegen.yaml openapi.yaml

bench: setup build
	@scripts/bench.sh

lint:
	gofmt -l . | (! grep .)
	$(GO) vet ./...

# A small demo image (static busybox, serves a page with httpd) for the quickstart.
example-image:
	$(GO) run ./tools/mkbusybox -o busybox.tar -tag demo:v1

clean:
	rm -rf $(BIN)
