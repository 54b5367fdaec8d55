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

func TestParseSizeField(t *testing.T) {
	if n, shown, err := parseSizeField("size", "", "1GB", MinMemoryBytes, MaxMemoryBytes); err != nil || n != 1<<30 || shown != "1GB" {
		t.Errorf("default: %d %q %v", n, shown, err)
	}
	if _, _, err := parseSizeField("size", "1000TB", "1GB", MinMemoryBytes, MaxMemoryBytes); err == nil || !strings.Contains(err.Error(), "out of range") {
		t.Errorf("huge size: %v", err)
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
