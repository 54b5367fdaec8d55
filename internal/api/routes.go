package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/go-chi/chi/v5"

	"hypeman/internal/auth"
)

// access is what a route requires.
type access int

const (
	// accessPublic: no credentials (health, the spec).
	accessPublic access = iota + 1
	// accessAuthenticated: any valid token.
	accessAuthenticated
	// accessScope: a valid token granting every scope in policy.scopes.
	accessScope
	// accessRegistry: the registry authenticates itself (Bearer or Basic,
	// image:read to pull, image:write to push, image:delete to delete),
	// because OCI clients need its error format and challenge header.
	accessRegistry
)

type policy struct {
	access access
	scopes []auth.Scope // all of them are required
}

func public() policy                         { return policy{access: accessPublic} }
func authenticated() policy                  { return policy{access: accessAuthenticated} }
func registryPolicy() policy                 { return policy{access: accessRegistry} }
func (p policy) String() string              { return fmt.Sprintf("%d:%v", p.access, p.scopes) }
func routeKey(method, pattern string) string { return method + " " + pattern }

// scoped requires s and every one of also (a route whose effect spans two
// resources needs both resources' scopes).
func scoped(s auth.Scope, also ...auth.Scope) policy {
	return policy{access: accessScope, scopes: append([]auth.Scope{s}, also...)}
}

// missingScope returns the first scope of pol that p lacks ("" = none).
func (pol policy) missingScope(p *auth.Principal) auth.Scope {
	for _, s := range pol.scopes {
		if !p.Allows(s) {
			return s
		}
	}
	return ""
}

// routePolicies is the route → scope table: every route the router serves
// must be here (TestRouteTableCoversRouter walks the real router) and every
// entry must be served. A route missing from the table is refused (fail
// closed), never served unauthenticated.
func routePolicies() map[string]policy {
	return map[string]policy{
		routeKey("GET", "/health"):    public(),
		routeKey("GET", "/spec.yaml"): public(),
		routeKey("GET", "/spec.json"): public(),

		routeKey("GET", "/capabilities"): authenticated(),

		routeKey("GET", "/images"):           scoped(auth.ImageRead),
		routeKey("POST", "/images"):          scoped(auth.ImageWrite),
		routeKey("GET", "/images/{name}"):    scoped(auth.ImageRead),
		routeKey("DELETE", "/images/{name}"): scoped(auth.ImageDelete),

		routeKey("GET", "/instances"):             scoped(auth.InstanceRead),
		routeKey("POST", "/instances"):            scoped(auth.InstanceWrite),
		routeKey("GET", "/instances/{id}"):        scoped(auth.InstanceRead),
		routeKey("PATCH", "/instances/{id}"):      scoped(auth.InstanceWrite),
		routeKey("DELETE", "/instances/{id}"):     scoped(auth.InstanceDelete),
		routeKey("POST", "/instances/{id}/start"): scoped(auth.InstanceWrite),
		routeKey("POST", "/instances/{id}/stop"):  scoped(auth.InstanceWrite),
		routeKey("GET", "/instances/{id}/logs"):   scoped(auth.InstanceRead),
		routeKey("GET", "/instances/{id}/stat"):   scoped(auth.InstanceRead),
		routeKey("GET", "/instances/{id}/stats"):  scoped(auth.InstanceRead),
		routeKey("GET", "/instances/{id}/wait"):   scoped(auth.InstanceRead),
		routeKey("GET", "/instances/{id}/events"): scoped(auth.InstanceRead),
		routeKey("GET", "/events"):                scoped(auth.InstanceRead),

		routeKey("GET", "/instances/{id}/auto-standby/status"): scoped(auth.InstanceRead),
		routeKey("POST", "/instances/{id}/auto-standby/hold"):  scoped(auth.InstanceWrite),

		routeKey("POST", "/instances/{id}/standby"): scoped(auth.InstanceWrite),
		routeKey("POST", "/instances/{id}/restore"): scoped(auth.InstanceWrite),
		routeKey("POST", "/instances/{id}/pause"):   scoped(auth.InstanceWrite),
		routeKey("POST", "/instances/{id}/resume"):  scoped(auth.InstanceWrite),
		routeKey("POST", "/instances/{id}/fork"):    scoped(auth.InstanceWrite),
		// Templates (kernel/hypeman PR #229): they change an instance.
		routeKey("POST", "/instances/{id}/promote-template"): scoped(auth.InstanceWrite),
		routeKey("POST", "/instances/{id}/demote-template"):  scoped(auth.InstanceWrite),
		// WebSockets (ws.go): running commands and writing files in a guest
		// is a write, even to read a file out.
		routeKey("GET", "/instances/{id}/exec"): scoped(auth.InstanceWrite),
		routeKey("GET", "/instances/{id}/cp"):   scoped(auth.InstanceWrite),

		routeKey("POST", "/instances/{id}/snapshots"):           scoped(auth.SnapshotWrite),
		routeKey("GET", "/instances/{id}/snapshot-schedule"):    scoped(auth.SnapshotRead),
		routeKey("PUT", "/instances/{id}/snapshot-schedule"):    scoped(auth.SnapshotWrite),
		routeKey("DELETE", "/instances/{id}/snapshot-schedule"): scoped(auth.SnapshotDelete),
		// Restoring overwrites an instance and forking boots one: the
		// instance scope is needed as well as the snapshot one.
		routeKey("POST", "/instances/{id}/snapshots/{sid}/restore"): scoped(auth.SnapshotWrite, auth.InstanceWrite),
		routeKey("GET", "/snapshots"):                               scoped(auth.SnapshotRead),
		routeKey("GET", "/snapshots/{id}"):                          scoped(auth.SnapshotRead),
		routeKey("DELETE", "/snapshots/{id}"):                       scoped(auth.SnapshotDelete),
		routeKey("POST", "/snapshots/{id}/fork"):                    scoped(auth.SnapshotWrite, auth.InstanceWrite),

		// Ingresses route traffic to instances: they are part of the
		// instance resource for authorization (no ingress:* scopes exist).
		routeKey("GET", "/ingresses"):         scoped(auth.InstanceRead),
		routeKey("POST", "/ingresses"):        scoped(auth.InstanceWrite),
		routeKey("GET", "/ingresses/{id}"):    scoped(auth.InstanceRead),
		routeKey("DELETE", "/ingresses/{id}"): scoped(auth.InstanceWrite),

		routeKey("GET", "/resources"):                 scoped(auth.ResourceRead),
		routeKey("POST", "/resources/memory/reclaim"): scoped(auth.ResourceWrite),

		routeKey("POST", "/instances/{id}/volumes/{volumeId}"):   scoped(auth.VolumeWrite),
		routeKey("DELETE", "/instances/{id}/volumes/{volumeId}"): scoped(auth.VolumeWrite),
		routeKey("GET", "/volumes"):                              scoped(auth.VolumeRead),
		routeKey("POST", "/volumes"):                             scoped(auth.VolumeWrite),
		routeKey("POST", "/volumes/from-archive"):                scoped(auth.VolumeWrite),
		routeKey("GET", "/volumes/{id}"):                         scoped(auth.VolumeRead),
		routeKey("DELETE", "/volumes/{id}"):                      scoped(auth.VolumeDelete),

		routeKey("GET", "/devices"):           scoped(auth.DeviceRead),
		routeKey("POST", "/devices"):          scoped(auth.DeviceWrite),
		routeKey("GET", "/devices/available"): scoped(auth.DeviceRead),
		routeKey("GET", "/devices/{id}"):      scoped(auth.DeviceRead),
		routeKey("DELETE", "/devices/{id}"):   scoped(auth.DeviceDelete),

		routeKey("GET", "/builds"):               scoped(auth.BuildRead),
		routeKey("POST", "/builds"):              scoped(auth.BuildWrite),
		routeKey("GET", "/builds/{id}"):          scoped(auth.BuildRead),
		routeKey("DELETE", "/builds/{id}"):       scoped(auth.BuildDelete),
		routeKey("GET", "/builds/{id}/events"):   scoped(auth.BuildRead),
		routeKey("GET", "/builders"):             scoped(auth.BuildRead),
		routeKey("POST", "/builders"):            scoped(auth.BuildWrite),
		routeKey("GET", "/builders/{id}"):        scoped(auth.BuildRead),
		routeKey("DELETE", "/builders/{id}"):     scoped(auth.BuildDelete),
		routeKey("POST", "/builders/{id}/prune"): scoped(auth.BuildWrite),

		// Pushes export hypemand's images: reading them is image:read,
		// starting one is image:write.
		routeKey("GET", "/pushes"):      scoped(auth.ImageRead),
		routeKey("POST", "/pushes"):     scoped(auth.ImageWrite),
		routeKey("GET", "/pushes/{id}"): scoped(auth.ImageRead),

		// The OCI distribution API (all methods under /v2/).
		routeKey("*", "/v2/*"): registryPolicy(),
	}
}

// principalKey carries the verified *auth.Principal in the request context.
type principalKey struct{}

// PrincipalFrom returns the caller authenticated by the API middleware
// (nil on public routes).
func PrincipalFrom(r *http.Request) *auth.Principal {
	p, _ := r.Context().Value(principalKey{}).(*auth.Principal)
	return p
}

// authorize enforces the route table. It runs after routing (it is a
// middleware of the route groups), so the matched chi route pattern is known.
func (s *server) authorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pattern := chi.RouteContext(r.Context()).RoutePattern()
		pol, ok := s.policies[routeKey(r.Method, pattern)]
		if !ok {
			pol, ok = s.policies[routeKey("*", pattern)]
		}
		if !ok {
			s.log.Error("route has no access policy; refusing", "method", r.Method, "route", pattern)
			writeJSONError(w, http.StatusInternalServerError, CodeInternal, "route has no access policy")
			return
		}
		switch pol.access {
		case accessPublic, accessRegistry:
			next.ServeHTTP(w, r)
			return
		}
		tok, err := auth.TokenFromRequest(r, false)
		var p *auth.Principal
		if err == nil {
			p, err = s.verifier.Verify(tok)
		}
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="hypeman"`)
			msg := "invalid or expired token"
			if errors.Is(err, auth.ErrNoToken) {
				msg = "missing bearer token"
			}
			writeJSONError(w, http.StatusUnauthorized, CodeUnauthorized, msg)
			return
		}
		if pol.access == accessScope {
			if miss := pol.missingScope(p); miss != "" {
				writeJSONError(w, http.StatusForbidden, CodeForbidden, "missing required scope: "+string(miss))
				return
			}
		}
		next.ServeHTTP(w, r.WithContext(contextWithPrincipal(r, p)))
	})
}

// principalAllows reports whether the request's caller holds scope (a
// request without a principal, on a public route, holds none).
func principalAllows(ctx context.Context, scope auth.Scope) bool {
	p, _ := ctx.Value(principalKey{}).(*auth.Principal)
	return p != nil && p.Allows(scope)
}

func contextWithPrincipal(r *http.Request, p *auth.Principal) context.Context {
	return context.WithValue(r.Context(), principalKey{}, p)
}
