// Package api is hypemand's HTTP layer: it serves the REST API described by
// openapi.yaml (the source of truth; server code generated into ./gen), the
// spec itself, and the built-in OCI registry, behind JWT authentication and a
// per-route scope table.
//
// Why it is shaped this way:
//   - Handlers are thin: decode (done by the generated strict server),
//     call a manager, map the result. Business rules and their validation
//     live in the managers; the spec only bounds shapes and sizes so junk is
//     rejected before it reaches them.
//   - Managers are reached through small interfaces declared here (Instances,
//     Images, and optional PathStatter, StateWaiter, EventSource, Lifecycle,
//     Snapshots, Guest, Ingresses), so handlers are tested with fakes, and
//     features that are not built yet answer 501 not_implemented instead of
//     being missing from the router.
//   - One error shape, {code, message}, for every 4xx/5xx: manager errors are
//     mapped by type (errors.Is/As) in one function, and the three places
//     where a library would otherwise write its own error body (request
//     validation, JSON decoding, panics) are all routed through it. Bad input
//     is never a 500.
//   - Authorization is a table keyed by method and chi route pattern, checked
//     by one middleware after routing; a test walks the real router so a new
//     route cannot ship without a scope.
//   - exec and cp are WebSockets (ws.go): plain chi handlers next to the
//     generated router (the strict server cannot upgrade), behind the same
//     auth and scope table, documented in the spec. Everything refusable
//     before the upgrade is refused as plain HTTP with the usual error body.
//   - Restart policies and health checks (policies.go) cross the wire as the
//     generated types and are converted to restart.Policy / health.Check
//     through JSON, whose shape the spec and those packages share: the
//     packages' own decoders fill the defaults and name the bad field, and a
//     test fails if the two shapes drift apart. PATCH /instances/{id}
//     replaces each setting given; `health_check: {}` removes the check.
//   - Streams (logs, events) are SSE written by our own response types,
//     flushed per event, with keepalive comments and no write deadline, so a
//     server-wide WriteTimeout never cuts a follow or a 5-minute wait short.
package api
