package ids

import (
	"regexp"
	"strings"
	"testing"
)

func TestNew(t *testing.T) {
	shape := regexp.MustCompile(`^[a-z][a-z0-9]{23}$`)
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := New()
		if !shape.MatchString(id) {
			t.Fatalf("New() = %q, want 24 lowercase alphanumerics starting with a letter", id)
		}
		if seen[id] {
			t.Fatalf("New() repeated %q", id)
		}
		seen[id] = true
	}
}

func TestNameProblem(t *testing.T) {
	for _, ok := range []string{"a", "web-1", "0db", strings.Repeat("a", 63)} {
		if why := NameProblem(ok); why != "" {
			t.Errorf("NameProblem(%q) = %q, want none", ok, why)
		}
	}
	for _, bad := range []string{"", "-a", "a-", "A", "a_b", "a.b", strings.Repeat("a", 64)} {
		if NameProblem(bad) == "" {
			t.Errorf("NameProblem(%q) accepted", bad)
		}
	}
}
