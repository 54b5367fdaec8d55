// Package gen is generated from openapi.yaml (the API's source of truth) by
// oapi-codegen v2.8.2 with oapi-codegen.yaml: models, a chi router and a
// strict server interface, plus the spec itself embedded for validation and
// for GET /spec.json and /spec.yaml. Never edit api.gen.go; change the spec
// and run `make generate` (a test in internal/api fails when the two drift).
//
// Why a strict server: handlers receive typed, decoded requests and return
// typed responses, so the HTTP shapes cannot drift from the spec, and every
// decoding or handler error flows through one error hook that writes the
// {code, message} body.
package gen
