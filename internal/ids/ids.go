// Package ids makes resource identifiers and holds the resource name rule.
//
// Why: instances, snapshots, ingresses and volumes all carry hypeman-shaped
// IDs (24 lowercase alphanumerics starting with a letter) and DNS-label
// names; one place makes the former and checks the latter so they cannot
// drift apart between resources.
package ids

import (
	"crypto/rand"
	"regexp"
)

// MaxNameLen is the longest resource name.
const MaxNameLen = 63

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

// New returns a 24-character lowercase alphanumeric ID starting with a
// letter (so it never looks like a number), random enough that prefixes of
// a few characters are unique in practice.
func New() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	var rnd [24]byte
	rand.Read(rnd[:]) // never fails on Linux
	b := make([]byte, len(rnd))
	for i, v := range rnd {
		b[i] = alphabet[int(v)%len(alphabet)]
	}
	b[0] = alphabet[int(rnd[0])%26]
	return string(b)
}

// NameProblem returns why name breaks the rule (lowercase letters, digits
// and dashes, starting and ending with a letter or digit, at most 63
// characters), or "" when it follows it.
func NameProblem(name string) string {
	switch {
	case name == "":
		return "is required"
	case len(name) > MaxNameLen:
		return "must be at most 63 characters"
	case !nameRE.MatchString(name):
		return "must contain only lowercase letters, digits and dashes, and start and end with a letter or digit"
	}
	return ""
}
