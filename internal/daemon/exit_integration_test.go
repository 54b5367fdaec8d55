package daemon_test

import (
	"context"
	"testing"
	"time"

	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/testutil/testimage"
)

// Reading an instance as fast as possible while its program exits with
// code 3: no reading is Unknown, and none is Stopped without the exit code
// (the flake of TestBootProgramOutputAndExitCodes: exit nil, want 3). Three
// boots, every reading checked.
func TestExitStateReadInATightLoop(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	host := testimage.Registry(t)
	ref := testimage.Push(t, host, "test/exit3", testimage.Busybox(t, testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"sleep 0.5; exit 3"},
	}))
	ctx := context.Background()
	in, err := d.Instances.Create(ctx, instances.CreateParams{Name: "exit3", Image: ref, Size: "256MB", VCPUs: 1, SkipGuestAgent: true})
	if err != nil {
		t.Fatal(err)
	}
	reads, shutdowns := 0, 0
	for boot := 1; boot <= 3; boot++ {
		if boot > 1 {
			if _, err := d.Instances.Start(ctx, in.ID, instances.StartParams{}); err != nil {
				t.Fatalf("start %d: %v", boot, err)
			}
		}
		for deadline := time.Now().Add(bootTimeout); ; reads++ {
			got, err := d.Instances.Get(ctx, in.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.State == state.Unknown {
				t.Fatalf("boot %d, read %d: Unknown (%v)", boot, reads, *got.StateError)
			}
			if got.State == state.Shutdown {
				shutdowns++ // the VMM is exiting and its exit is still being recorded
			}
			if got.State == state.Stopped {
				if got.ExitCode == nil || *got.ExitCode != 3 {
					t.Fatalf("boot %d, read %d: Stopped with exit code %v, want 3 (%v)", boot, reads, got.ExitCode, got.ExitMessage)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("boot %d: state %s after %s\n%s", boot, got.State, bootTimeout, serialLog(t, d, in.ID))
			}
		}
	}
	t.Logf("%d reads over 3 boots, none Unknown or Stopped without its exit code (%d Shutdown while exiting)", reads, shutdowns)
}
