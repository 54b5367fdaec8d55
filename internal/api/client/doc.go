// Package client is the typed HTTP client for the hypeman API, generated
// from openapi.yaml (the API's source of truth) by oapi-codegen v2.8.2 with
// oapi-codegen.yaml in this directory: the models plus a Client (raw
// *http.Response per operation) and a ClientWithResponses (body read and
// decoded per status). Never edit client.gen.go; change the spec and run
// `make generate` (a test in this package fails when the two drift).
//
// Why generated rather than hand-written: the `hypeman` CLI is the spec's
// second consumer after the server, and generating both sides from one file
// means a changed field name, type or query-parameter style breaks the CLI's
// build instead of its behaviour. Server-sent event endpoints (logs, events)
// are used through the raw Client, whose *http.Response body the caller
// streams; the SSE framing itself is parsed by
// internal/api/sse.
package client
