// Package conformance holds the end-to-end check that hypemand speaks
// hypeman 0.3.0's API to hypeman's own clients: the upstream CLI
// (kernel/hypeman-cli) and Go SDK (kernel/hypeman-go), built unmodified from
// the compat directory, drive a real daemon with real VMs through the whole
// instance life (run, ps, inspect, logs, exec, cp, stats, wait, ingress,
// stop, start, standby, restore, fork, snapshots, rm) and every answer is
// checked for content, not only for success.
//
// Why a package of its own: the API's unit tests check shapes against the
// spec we wrote; only a client we did not write proves that the shapes,
// the stream protocols and the error bodies are the ones hypeman's users
// already depend on. It has no code besides the test and the SDK program
// under testdata.
package conformance
