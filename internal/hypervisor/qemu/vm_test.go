package qemu

import (
	"testing"

	"hypeman/internal/hypervisor"
)

func TestMapRunState(t *testing.T) {
	cases := map[string]hypervisor.RunState{
		"running":        hypervisor.RunStateRunning,
		"prelaunch":      hypervisor.RunStateCreated,
		"inmigrate":      hypervisor.RunStateCreated,
		"paused":         hypervisor.RunStatePaused,
		"postmigrate":    hypervisor.RunStatePaused,
		"finish-migrate": hypervisor.RunStatePaused,
		"io-error":       hypervisor.RunStateIOError,
		"suspended":      hypervisor.RunStatePaused,
		"shutdown":       hypervisor.RunStateShutdown,
		"guest-panicked": hypervisor.RunStateShutdown,
		"internal-error": hypervisor.RunStateShutdown,
	}
	for in, want := range cases {
		if got, err := MapRunState(in); err != nil || got != want {
			t.Errorf("MapRunState(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := MapRunState("bogus"); err == nil {
		t.Error("unknown state accepted")
	}
}
