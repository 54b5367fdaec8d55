package cli

import (
	"math/rand/v2"
	"strings"
	"testing"
)

func TestGeneratedNamesAreValidAndVaried(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	seen := map[string]bool{}
	for i := 0; i < 10000; i++ {
		n := generateName(r)
		if err := checkName(n); err != nil {
			t.Fatalf("generated %q: %v", n, err)
		}
		parts := strings.Split(n, "-")
		if len(parts) != 3 || len(parts[2]) != 4 {
			t.Fatalf("generated %q: want adjective-noun-NNNN", n)
		}
		seen[n] = true
	}
	if len(seen) < 9900 {
		t.Fatalf("only %d distinct names in 10000", len(seen))
	}
	// The word lists themselves satisfy the rule (no dashes inside words).
	for _, w := range append(nameAdjectives[:], nameNouns[:]...) {
		if !nameRule.MatchString(w) || strings.Contains(w, "-") {
			t.Errorf("word %q breaks the name rule", w)
		}
	}
}

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"a", "web", "web-1", "0abc", strings.Repeat("a", 63)} {
		if err := checkName(ok); err != nil {
			t.Errorf("checkName(%q) = %v, want ok", ok, err)
		}
	}
	for _, bad := range []string{"", "-web", "web-", "Web", "web_1", "web.1", "wéb", strings.Repeat("a", 64), "a b"} {
		if err := checkName(bad); err == nil {
			t.Errorf("checkName(%q) accepted", bad)
		}
	}
}
