// Package scripts holds the tests of the repository's shell entry points:
// scripts/setup.sh (fresh-host setup, including the Go toolchain) and the
// Makefile targets people type first (`make run`, `make test`,
// `make test-unit`).
//
// Why Go tests for shell: these paths run once per host and break
// silently (a Debian host without Go, a non-root user, a host where
// setup would change the network). Running the real script and the real
// make targets from `go test` keeps them under the same suite and tiers as
// everything else (see internal/testutil/tier).
package scripts
