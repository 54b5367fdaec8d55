package state

import (
	"errors"
	"testing"
)

func TestParseExactNames(t *testing.T) {
	for _, s := range All() {
		got, err := Parse(string(s))
		if err != nil || got != s {
			t.Fatalf("Parse(%q) = %q, %v", s, got, err)
		}
	}
	for _, bad := range []string{"", "running", "RUNNING", "Deleted", " Running"} {
		got, err := Parse(bad)
		if !errors.Is(err, ErrInvalid) || got != "" {
			t.Fatalf("Parse(%q) = %q, %v; want ErrInvalid", bad, got, err)
		}
	}
}

func TestTerminalForWait(t *testing.T) {
	want := map[State]bool{
		Created: false, Initializing: false, Running: false,
		Paused: true, Shutdown: true, Stopped: true, Standby: true, Template: true, Unknown: true,
	}
	if len(want) != len(All()) {
		t.Fatalf("test table covers %d states, All() has %d", len(want), len(All()))
	}
	for s, term := range want {
		if s.TerminalForWait() != term {
			t.Errorf("%s.TerminalForWait() = %v, want %v", s, !term, term)
		}
		if !s.Valid() {
			t.Errorf("%s not Valid", s)
		}
	}
	if State("Deleted").Valid() || State("").Valid() {
		t.Error("undefined states reported valid")
	}
}
