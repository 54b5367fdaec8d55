# hypeman — run OCI images as VMs.  `make run` and `make test` do everything on a fresh Debian 12 host.
SHELL := /bin/bash
BIN := bin
DATA_DIR ?= /var/lib/hypeman
export HYPEMAN_KERNEL_DIR ?= $(DATA_DIR)/system/kernel
# Tests find the guest init here instead of rebuilding it per package.
export HYPEMAN_INIT_BINARY ?= $(abspath $(BIN))/hypeman-init

# Go: `make setup` installs go.mod's version into $(HYPEMAN_GO_PREFIX)/go-<version> when the go on
# PATH is missing or older (Debian 12 ships 1.19). That toolchain comes first on PATH, so tests
# that run `go` use it too; otherwise the go on PATH is used.
export HYPEMAN_GO_PREFIX ?= /usr/local
GO_VERSION := $(or $(shell sed -n 's/^toolchain go//p' go.mod),$(shell sed -n 's/^go //p' go.mod))
GO_ROOT := $(HYPEMAN_GO_PREFIX)/go-$(GO_VERSION)
export PATH := $(GO_ROOT)/bin:$(PATH):/usr/sbin:/sbin
# Evaluated when used (after setup ran), not when the Makefile is read.
GO ?= $(shell test -x $(GO_ROOT)/bin/go && echo $(GO_ROOT)/bin/go || echo go)

OAPI_CODEGEN = $(GO) run github.com/oapi-codegen/oapi-codegen/v2/cmd/oapi-codegen@v2.8.2
TEST_TIMEOUT ?= 40m
PKGS ?= ./...
TESTFLAGS ?=
# Each test run logs to its own file here (git-ignored); the path is printed at the end.
TEST_LOG_DIR ?= .test-logs

.PHONY: all setup build init run test test-unit generate bench lint clean example-image k8s-bins k8s-test

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
	$(GO) build -o $(BIN)/hypeman-kubelet ./cmd/hypeman-kubelet

# hypemand prints what bridge networking will change on the host (bridge, IP forwarding, NAT)
# before doing it, and how to run without (HYPEMAN_NETWORK_MODE=none|user, HYPEMAN_NETWORK_NETNS).
run: setup build
	$(BIN)/hypemand --data-dir $(DATA_DIR)

# run_tests TIER,FLAGS,DIR,PKGS,NAME: go test $(TESTFLAGS) PKGS in module DIR in that tier (see
# internal/testutil/tier): output on the terminal without the RUN/PAUSE/CONT noise, and in full in a
# per-run log file test-NAME-<time>-<pid>.log (in TEST_LOG_DIR, or a fresh /tmp dir when that is not
# writable, e.g. a non-root user in a root-owned checkout).
define run_tests
	@dir=$(TEST_LOG_DIR); { mkdir -p "$$dir" && test -w "$$dir"; } 2>/dev/null || dir=$$(mktemp -d /tmp/hypeman-test-logs.XXXXXX); \
	log=$$(cd "$$dir" && pwd)/test-$(5)-$$(date +%Y%m%d-%H%M%S)-$$$$.log; \
	echo "(cd $(3) && HYPEMAN_TEST_TIER=$(1) $(GO) test $(2) $(TESTFLAGS) -timeout $(TEST_TIMEOUT) -count=1 $(4))"; \
	(cd $(3) && HYPEMAN_TEST_TIER=$(1) $(GO) test $(2) $(TESTFLAGS) -timeout $(TEST_TIMEOUT) -count=1 $(4)) 2>&1 | tee "$$log" | grep -v '^=== \(RUN\|PAUSE\|CONT\)'; \
	rc=$${PIPESTATUS[0]}; echo "$(5) tests: exit $$rc; full log: $$log"; exit $$rc
endef

# The Kubernetes tests (test/k8s) are a module of their own so this one never depends on
# k8s.io/kubernetes. Their pinned etcd/kube-apiserver/kube-scheduler/kubectl are built once (minutes)
# into $HYPEMAN_K8S_CACHE or /var/cache/hypeman/k8s/<key>/bin, outside the clone; later runs reuse them.
# The cluster test also builds hypemand and cmd/hypeman-kubelet from this checkout.
K8S_DIR := test/k8s
K8S_PKGS ?= ./...
define k8s_tests
	cd $(K8S_DIR) && $(GO) run ./cmd/k8sbins
	cd $(K8S_DIR) && $(GO) vet $(K8S_PKGS)
	$(call run_tests,full,,$(K8S_DIR),$(K8S_PKGS),k8s-full)
endef

# Every test, unit and integration (integration tests boot real VMs under QEMU, some need root),
# then the Kubernetes tests (a control plane on loopback, hypemand + hypeman-kubelet nodes, real VMs).
# A missing prerequisite (QEMU, kernel, root, a tool) fails its test: nothing is skipped.
test: setup init
	$(GO) vet $(PKGS)
	$(call run_tests,full,,.,$(PKGS),full)
	$(k8s_tests)

# Tests that need no VMs, no root and no network namespaces: any user, any host with Go.
# VM and root tests skip with a message; tests whose host tool is missing skip too. For test/k8s
# that leaves its unit tests (the cluster and control-plane tests skip).
test-unit:
	$(call run_tests,unit,-short,.,$(PKGS),unit)
	$(call run_tests,unit,-short,$(K8S_DIR),$(K8S_PKGS),k8s-unit)

# The Kubernetes binaries alone (`go run ./cmd/k8sbins` prints their directory).
k8s-bins:
	cd $(K8S_DIR) && $(GO) run ./cmd/k8sbins

# Only the Kubernetes tests (`make test` runs them after the others).
k8s-test: setup init
	$(k8s_tests)

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
