// Package cli is the `hypeman` command line client: cobra commands that talk
// to hypemand's REST API (pull, images, rmi, run, ps, inspect, logs, stop,
// start, rm, push, wait, events, version, standby, restore, pause, resume,
// fork, snapshot, exec, cp, ingress, update, template). cmd/hypeman is a thin main
// around Run.
//
// Why it is shaped this way:
//   - Everything is reachable through one function,
//     Run(ctx, args, stdin, stdout, stderr, env) int, that owns no global
//     state: streams and the environment are parameters and the exit code is
//     the result. Unit tests drive it against an httptest server, and
//     end-to-end tests can call it in-process against a real daemon.
//   - Requests go through the client generated from openapi.yaml
//     (internal/api/client), so the CLI cannot drift from the spec; the only
//     hand-written wire code is what the generator does not cover: the small
//     server-sent-events reader (internal/api/sse) for logs and lifecycle
//     events, and the exec and cp WebSockets (internal/api/execws for the
//     dialing and the exec protocol, shared with hypeman-kubelet; cp.go;
//     their first messages use the generated ExecStart and CopyStart types).
//   - Output is for people by default (tables, a progress bar when stderr is
//     a terminal, plain status lines otherwise) and for programs with
//     `--format json`, which prints the API's JSON bodies as received.
//     Results go to stdout, progress and diagnostics to stderr, so
//     `id=$(hypeman run ...)` works.
//   - Flags that hypeman's own CLI also has keep its names (--hotplug-size,
//     --disk-io, --bandwidth-down, --snapshot-compression-level, standby's
//     --compression-delay, ...), so people moving over keep their habits.
//     Flag combinations, choices and durations are checked here (usage
//     errors); sizes, rates and ranges are the server's, whose 400 names
//     the field.
//   - Errors carry the server's {code, message} body; every failure exits 1
//     except where a command documents other codes (wait: 2 on timeout) and
//     an interrupt (130).
//   - Configuration is the hypeman CLI's: HYPEMAN_BASE_URL (default
//     http://127.0.0.1:8080) and HYPEMAN_API_KEY (sent as a Bearer token, and
//     as the Basic-auth password to the built-in registry on push).
package cli
