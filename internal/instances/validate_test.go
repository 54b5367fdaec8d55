package instances

import (
	"errors"
	"strings"
	"testing"

	"hypeman/internal/instances/state"
)

func TestValidateName(t *testing.T) {
	good := []string{"a", "web-1", "0x", strings.Repeat("a", 63)}
	bad := []string{"", "-a", "a-", "A", "a_b", "a.b", "a b", strings.Repeat("a", 64), "é"}
	for _, n := range good {
		if err := ValidateName(n); err != nil {
			t.Errorf("%q: %v", n, err)
		}
	}
	for _, n := range bad {
		err := ValidateName(n)
		var ia *InvalidArgumentError
		if !errors.As(err, &ia) || ia.Field != "name" || !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: want InvalidArgumentError(name), got %v", n, err)
		}
	}
}

func TestParseSize(t *testing.T) {
	cases := map[string]int64{"1GB": 1 << 30, "512MB": 512 << 20, "2g": 2 << 30, "1.5GiB": 3 << 29, "4096": 4096, " 10 GB ": 10 << 30, "1TB": 1 << 40}
	for in, want := range cases {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("%q: got %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GB", "1XB", "-1GB", "1e9999GB", "abc", "1..2GB", "99999999999999999999TB"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("%q: want error", in)
		}
	}
	if _, _, err := parseSizeField("size", "1000TB", "1GB", MinMemoryBytes, MaxMemoryBytes); err == nil || !strings.Contains(err.Error(), "out of range") {
		t.Errorf("huge size: %v", err)
	}
	if FormatSize(1<<30) != "1GB" || FormatSize(1536<<20) != "1536MB" || FormatSize(100) != "100B" {
		t.Error("FormatSize")
	}
}

func TestNewIDShape(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := newID()
		if len(id) != 24 || id[0] < 'a' || id[0] > 'z' || seen[id] {
			t.Fatalf("bad id %q", id)
		}
		seen[id] = true
	}
}

func TestTransitionTable(t *testing.T) {
	if err := checkTransition(ActionStart, state.Stopped); err != nil {
		t.Fatal(err)
	}
	err := checkTransition(ActionStart, state.Running)
	var te *TransitionError
	if !errors.As(err, &te) || !strings.Contains(err.Error(), "allowed: stop") {
		t.Fatalf("got %v", err)
	}
	for _, s := range state.All() {
		if checkTransition(ActionDelete, s) != nil {
			t.Errorf("delete must be allowed in %s", s)
		}
	}
}
