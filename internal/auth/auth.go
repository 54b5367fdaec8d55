// Package auth owns API authentication and authorization primitives: HS256
// JWT bearer tokens (minting and verification), permission scopes and their
// wildcard matching, and the daemon's signing secret on disk.
//
// Why it is shaped this way:
//   - HS256 only. The daemon both mints (through cmd/hypeman-token, with the
//     same secret file) and verifies its tokens, so a shared secret is all
//     that is needed, and pinning the algorithm closes the classic JWT holes
//     (alg "none", RS/HS key confusion): any other alg is rejected.
//   - Scopes are plain strings "resource:action" carried in the `permissions`
//     claim (hypeman's shape). A token without the claim has full access, so
//     tokens minted without -scopes keep working as admin tokens; a present
//     but empty claim grants nothing.
//   - This package knows nothing about HTTP routes: which route needs which
//     scope is the API layer's table (internal/api), which can then be tested
//     against the real router. Here are only the pieces that table uses:
//     Verifier, Principal.Allows and TokenFromRequest.
//   - No package state: the secret is passed in, so tests and several daemons
//     in one process never share keys by accident.
package auth

import (
	"fmt"
	"slices"
	"strings"
)

// Scope is a permission: "resource:action", "resource:*" or "*".
type Scope string

// Scopes the API checks.
const (
	InstanceRead   Scope = "instance:read"
	InstanceWrite  Scope = "instance:write"
	InstanceDelete Scope = "instance:delete"
	ImageRead      Scope = "image:read"
	ImageWrite     Scope = "image:write"
	ImageDelete    Scope = "image:delete"
	SnapshotRead   Scope = "snapshot:read"
	SnapshotWrite  Scope = "snapshot:write"
	SnapshotDelete Scope = "snapshot:delete"
	VolumeRead     Scope = "volume:read"
	VolumeWrite    Scope = "volume:write"
	VolumeDelete   Scope = "volume:delete"
	DeviceRead     Scope = "device:read"
	DeviceWrite    Scope = "device:write"
	DeviceDelete   Scope = "device:delete"
	BuildRead      Scope = "build:read"
	BuildWrite     Scope = "build:write"
	BuildDelete    Scope = "build:delete"
	ResourceRead   Scope = "resource:read"
	ResourceWrite  Scope = "resource:write"
	// All grants everything.
	All Scope = "*"
)

// Resources and actions a scope may name.
var (
	resources = []string{"instance", "image", "snapshot", "volume", "resource"}
	actions   = []string{"read", "write", "delete"}
)

// ParseScope validates s: "*", "<resource>:*" or "<resource>:<action>" with a
// known resource and action. Minting uses it so a typo never yields a token
// that silently grants nothing.
func ParseScope(s string) (Scope, error) {
	if s == string(All) {
		return All, nil
	}
	res, act, ok := strings.Cut(s, ":")
	if !ok || !slices.Contains(resources, res) || (act != "*" && !slices.Contains(actions, act)) {
		return "", fmt.Errorf("unknown scope %q (want *, <resource>:* or <resource>:<action> with resource in %s and action in %s)",
			s, strings.Join(resources, "|"), strings.Join(actions, "|"))
	}
	return Scope(s), nil
}

// ParseScopes parses a comma-separated list ("" = none). Duplicates are
// removed; order is kept.
func ParseScopes(list string) ([]Scope, error) {
	var out []Scope
	for _, f := range strings.Split(list, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		s, err := ParseScope(f)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out, nil
}

// Grants reports whether holding scope g satisfies the requirement want.
func (g Scope) Grants(want Scope) bool {
	if g == All || g == want {
		return true
	}
	gr, ga, ok := strings.Cut(string(g), ":")
	if !ok || ga != "*" {
		return false
	}
	wr, _, ok := strings.Cut(string(want), ":")
	return ok && wr == gr
}

// Principal is the verified identity behind a request.
type Principal struct {
	// UserID is the token's subject.
	UserID string
	// Scopes are the granted permissions; nil means the token carried no
	// permissions claim and has full access.
	Scopes []Scope
}

// Allows reports whether p may do something that needs want.
func (p *Principal) Allows(want Scope) bool {
	if p == nil {
		return false
	}
	if p.Scopes == nil {
		return true
	}
	for _, g := range p.Scopes {
		if g.Grants(want) {
			return true
		}
	}
	return false
}
