package instances

import (
	"crypto/rand"
	"errors"
	"fmt"
	"path"
	"regexp"
	"strings"

	"hypeman/internal/tags"
	"hypeman/internal/units"
)

// Limits applied to create requests. They bound what one request may ask of
// the host; they are deliberately generous but finite so "huge" inputs get a
// 400, not an OOM-killed daemon or a host full of sparse files.
const (
	MinMemoryBytes  = 64 << 20
	MaxMemoryBytes  = 256 << 30
	MaxVCPUs        = 64
	MinOverlayBytes = 16 << 20
	MaxOverlayBytes = 4 << 40
	maxNameLen      = 63
	maxEnv          = 1024
	maxArgs         = 1024
	// MaxWorkingDirLen bounds working_dir (Linux's PATH_MAX).
	MaxWorkingDirLen = 4096
)

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

// ValidateName checks hypeman's instance name rule: lowercase letters,
// digits and dashes, not starting or ending with a dash, at most 63 chars.
func ValidateName(name string) error {
	switch {
	case name == "":
		return &InvalidArgumentError{Field: "name", Reason: "is required"}
	case len(name) > maxNameLen:
		return &InvalidArgumentError{Field: "name", Reason: fmt.Sprintf("must be at most %d characters", maxNameLen)}
	case !nameRE.MatchString(name):
		return &InvalidArgumentError{Field: "name", Reason: "must contain only lowercase letters, digits and dashes, and start and end with a letter or digit"}
	}
	return nil
}

// validateWorkingDir checks a create request's working_dir: "" (the
// image's) or an absolute, clean path the guest can chdir to.
func validateWorkingDir(dir string) error {
	bad := func(reason string) error { return &InvalidArgumentError{Field: "working_dir", Reason: reason} }
	switch {
	case dir == "":
		return nil
	case len(dir) > MaxWorkingDirLen:
		return bad(fmt.Sprintf("must be at most %d bytes", MaxWorkingDirLen))
	case strings.ContainsRune(dir, 0):
		return bad("must not contain a NUL byte")
	case !strings.HasPrefix(dir, "/"):
		return bad(fmt.Sprintf("must be an absolute path (starting with /), got %q", dir))
	case path.Clean(dir) != dir:
		return bad(fmt.Sprintf("must be a clean path (no //, . or .. elements, no trailing /): use %q", path.Clean(dir)))
	}
	return nil
}

func parseSizeField(field, s, def string, lo, hi int64) (int64, string, error) {
	if s == "" {
		s = def
	}
	n, err := units.ParseSize(s)
	if err != nil {
		return 0, "", &InvalidArgumentError{Field: field, Reason: err.Error()}
	}
	if n < lo || n > hi {
		return 0, "", &InvalidArgumentError{Field: field, Reason: fmt.Sprintf("%s is out of range (%s to %s)", s, units.FormatSize(lo), units.FormatSize(hi))}
	}
	return n, s, nil
}

func validateKV(field string, m map[string]string, max int, keyOK func(string) bool) error {
	if len(m) > max {
		return &InvalidArgumentError{Field: field, Reason: fmt.Sprintf("at most %d entries", max)}
	}
	for k := range m {
		if !keyOK(k) {
			return &InvalidArgumentError{Field: field, Reason: fmt.Sprintf("invalid key %q", k)}
		}
	}
	return nil
}

func envKeyOK(k string) bool {
	return k != "" && !strings.ContainsAny(k, "=\x00") && len(k) <= 256
}

// validateTags applies the tag rules (internal/tags) and reports a
// violation as an InvalidArgumentError.
func validateTags(field string, t map[string]string) error {
	if err := tags.Validate(field, t); err != nil {
		var fe *tags.FieldError
		if errors.As(err, &fe) {
			return &InvalidArgumentError{Field: fe.Field, Reason: fe.Reason}
		}
		return err
	}
	return nil
}

// newID returns a 24-character lowercase alphanumeric identifier (the shape
// hypeman uses), random enough that prefixes of a few characters are unique
// in practice.
func newID() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 24)
	rnd := make([]byte, 24)
	if _, err := rand.Read(rnd); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // never fails on Linux
	}
	for i := range b {
		b[i] = alphabet[int(rnd[i])%len(alphabet)]
	}
	b[0] = alphabet[int(rnd[0])%26] // start with a letter so IDs never look like numbers
	return string(b)
}
