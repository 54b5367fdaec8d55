package api

import (
	"encoding/json"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"

	"hypeman/internal/auth"
)

// TestRouteTableCoversRouter walks the real router: every route it serves
// has an access policy, and every policy names a served route.
func TestRouteTableCoversRouter(t *testing.T) {
	e := newTestEnv(t, nil)
	policies := routePolicies()
	served := map[string]bool{}
	err := chi.Walk(e.api.s.router, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		key := routeKey(method, route)
		if _, ok := policies[key]; ok {
			served[key] = true
			return nil
		}
		if _, ok := policies[routeKey("*", route)]; ok {
			served[routeKey("*", route)] = true
			return nil
		}
		t.Errorf("route %s has no access policy in routePolicies()", key)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var stale []string
	for k := range policies {
		if !served[k] {
			stale = append(stale, k)
		}
	}
	sort.Strings(stale)
	if len(stale) > 0 {
		t.Errorf("policies for routes the router does not serve: %v", stale)
	}
	if len(served) < 20 {
		t.Fatalf("walked only %d routes; is the walk broken?", len(served))
	}
}

// TestSpecScopesMatchTable checks that the x-required-scope each operation
// documents in openapi.yaml is the scope the table enforces.
func TestSpecScopesMatchTable(t *testing.T) {
	e := newTestEnv(t, nil)
	var spec struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(e.api.s.specJSON, &spec); err != nil {
		t.Fatal(err)
	}
	policies := routePolicies()
	n := 0
	for path, ops := range spec.Paths {
		for method, raw := range ops {
			if method == "parameters" {
				continue
			}
			var op struct {
				Scope    string            `json:"x-required-scope"`
				Security []json.RawMessage `json:"security"`
			}
			if err := json.Unmarshal(raw, &op); err != nil {
				t.Fatal(err)
			}
			key := routeKey(strings.ToUpper(method), path)
			pol, ok := policies[key]
			if !ok {
				t.Errorf("spec operation %s has no policy", key)
				continue
			}
			n++
			switch pol.access {
			case accessPublic:
				if op.Security == nil || len(op.Security) != 0 || op.Scope != "" {
					t.Errorf("%s is public in the table but the spec does not say security: []", key)
				}
			case accessAuthenticated:
				if op.Scope != "" {
					t.Errorf("%s: spec scope %q, table: any token", key, op.Scope)
				}
			case accessScope:
				// The spec names the route's own scope (the first); a
				// route needing more lists them comma-separated or
				// names only the first.
				var doc []auth.Scope
				for f := range strings.SplitSeq(op.Scope, ",") {
					doc = append(doc, auth.Scope(strings.TrimSpace(f)))
				}
				if doc[0] != pol.scopes[0] || len(doc) > len(pol.scopes) {
					t.Errorf("%s: spec scope %q, table %v", key, op.Scope, pol.scopes)
				}
				for _, s := range doc {
					if !slices.Contains(pol.scopes, s) {
						t.Errorf("%s: spec scope %q not required by the table %v", key, s, pol.scopes)
					}
				}
			}
		}
	}
	if n < 18 {
		t.Fatalf("checked only %d operations", n)
	}
}

// TestUnmappedRouteFailsClosed: a route without a policy is refused.
func TestUnmappedRouteFailsClosed(t *testing.T) {
	e := newTestEnv(t, nil)
	delete(e.api.s.policies, routeKey("GET", "/instances"))
	resp := e.do("GET", "/instances", mint(t), "")
	if code, _ := errBody(t, resp); resp.StatusCode != 500 || code != "internal" {
		t.Fatalf("unmapped route: %d %s", resp.StatusCode, code)
	}
}

// TestSnapshotRestoreAndForkNeedInstanceWrite: restoring a snapshot
// overwrites an instance and forking one boots a new instance, so the
// snapshot scope alone is not enough.
func TestSnapshotRestoreAndForkNeedInstanceWrite(t *testing.T) {
	e := newTestEnv(t, nil)
	for _, path := range []string{"/instances/web/snapshots/s1/restore", "/snapshots/s1/fork"} {
		body := ""
		if strings.HasSuffix(path, "/fork") {
			body = `{"name":"copy"}`
		}
		for _, c := range []struct {
			scopes []auth.Scope
			status int
			msg    string
		}{
			{[]auth.Scope{auth.SnapshotWrite}, 403, "missing required scope: instance:write"},
			{[]auth.Scope{auth.InstanceWrite}, 403, "missing required scope: snapshot:write"},
			{[]auth.Scope{auth.SnapshotWrite, auth.InstanceWrite}, 501, ""}, // past auth: no snapshot backend here
		} {
			resp := e.do("POST", path, mint(t, c.scopes...), body)
			code, msg := errBody(t, resp)
			if resp.StatusCode != c.status || (c.msg != "" && msg != c.msg) {
				t.Errorf("POST %s with %v: %d %s %q, want %d %q", path, c.scopes, resp.StatusCode, code, msg, c.status, c.msg)
			}
		}
	}
}
