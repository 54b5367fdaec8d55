package daemon_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"hypeman/internal/hypervisor"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/rotlog"
	"hypeman/internal/testutil/testimage"
)

// A chatty program's console log rotates at serial_log_max_size while a
// follower (started with the VM) reads it: the follower gets every line
// once and in order, a tail spans rotated files, a 200 KB line without a
// newline comes back in 64 KiB pieces, and the exit code is still read from
// the console.
func TestSerialLogRotatesUnderAChattyProgram(t *testing.T) {
	t.Parallel()
	d := newDaemonWith(t, map[string]string{"serial_log_max_size": "16KB", "serial_log_files": "100"})
	host := testimage.Registry(t)
	ref := testimage.Push(t, host, "test/chatty", testimage.Busybox(t, testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd: []string{`i=0; while [ $i -lt 3000 ]; do echo "tick $i padding-padding-padding"; i=$((i+1)); done
head -c 200000 /dev/zero | tr '\0' z; echo; echo done; sleep 1; exit 4`},
	}))
	ctx := context.Background()
	in, err := d.Instances.Create(ctx, instances.CreateParams{Name: "chatty", Image: ref, Size: "256MB", VCPUs: 1, SkipGuestAgent: true})
	if err != nil {
		t.Fatal(err)
	}
	followed := make(chan []string, 1)
	go func() {
		var lines []string
		err := d.Instances.StreamLogs(ctx, in.ID, instances.LogOptions{Source: instances.LogApp, Tail: -1, Follow: true}, func(l string) error {
			lines = append(lines, l)
			return nil
		})
		if err != nil {
			t.Errorf("follow: %v", err)
		}
		followed <- lines
	}()
	got := waitState(t, d, in.ID, state.Stopped, bootTimeout)
	if got.ExitCode == nil || *got.ExitCode != 4 {
		t.Fatalf("exit code %v, want 4", got.ExitCode)
	}
	var lines []string
	select {
	case lines = <-followed:
	case <-time.After(10 * time.Second):
		t.Fatal("follow did not end after the VM exited")
	}
	ticks, pieces := 0, 0
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "tick "):
			if want := fmt.Sprintf("tick %d padding-padding-padding", ticks); l != want {
				t.Fatalf("followed line %q, want %q", l, want)
			}
			ticks++
		case strings.Trim(l, "z") == "" && l != "":
			pieces++
			if len(l) > rotlog.MaxLine {
				t.Fatalf("piece of %d bytes", len(l))
			}
		}
	}
	if ticks != 3000 || pieces != 4 || !slices.Contains(lines, "done") {
		t.Fatalf("followed %d ticks (want 3000), %d pieces of the long line (want 4), done seen %v", ticks, pieces, slices.Contains(lines, "done"))
	}
	segs, err := rotlog.Segments(filepath.Join(d.Config.Paths().InstanceDir(in.ID), hypervisor.SerialLogName))
	if err != nil || len(segs) < 5 {
		t.Fatalf("serial log files: %d (%v), want rotations", len(segs), err)
	}
	var tail []string
	if err := d.Instances.StreamLogs(ctx, in.ID, instances.LogOptions{Source: instances.LogApp, Tail: 20}, func(l string) error {
		tail = append(tail, l)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The same end as the follower saw (kernel lines after "done" included).
	if !slices.Equal(tail, lines[len(lines)-20:]) {
		t.Fatalf("tail 20: %q\nfollower's last 20: %q", tail, lines[len(lines)-20:])
	}
	t.Logf("%d console lines followed through %d files", len(lines), len(segs))
}
