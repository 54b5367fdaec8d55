package daemon_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"hypeman/internal/guest/agent"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/testutil/testimage"
)

// The host filesystem under an instance fills up while the guest writes:
// QEMU pauses the guest (io-error) and the instance shows Paused with the
// disk and the reason in state_error and in its hypeman log; once space is
// freed, resume continues the guest and its write completes. The data dir
// is a small tmpfs of the test's own.
func TestFullHostDiskPausesWithReasonAndResumes(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	dataDir := t.TempDir()
	if err := unix.Mount("tmpfs", dataDir, "tmpfs", 0, "size=512m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dataDir, unix.MNT_DETACH) })
	// The 1 GB sparse overlay on a 512 MB filesystem oversubscribes the
	// disk on purpose (that is how a host runs out): admission must let it.
	d := newDaemonWith(t, map[string]string{"data_dir": dataDir, "oversub_disk": "4"})
	host := testimage.Registry(t)
	ref := testimage.Push(t, host, "test/writer", testimage.Busybox(t, testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"while true; do sleep 1; done"},
	}))
	ctx := context.Background()
	in, err := d.Instances.Create(ctx, instances.CreateParams{Name: "writer", Image: ref, Size: "256MB", VCPUs: 1, OverlaySize: "1GB"})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, d, in.ID, state.Running, bootTimeout)

	// Leave 8 MB free, then write 64 MB from the guest.
	var st unix.Statfs_t
	if err := unix.Statfs(dataDir, &st); err != nil {
		t.Fatal(err)
	}
	filler := filepath.Join(dataDir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Fallocate(int(f.Fd()), 0, 0, int64(st.Bavail)*st.Bsize-8<<20); err != nil {
		t.Fatalf("fill the tmpfs: %v", err)
	}
	f.Close()
	type result struct {
		res agent.ExecResult
		out string
		err error
	}
	wrote := make(chan result, 1)
	go func() {
		var out bytes.Buffer
		res, err := d.Instances.Exec(ctx, in.ID, agent.ExecRequest{Argv: []string{"dd", "if=/dev/zero", "of=/big", "bs=1M", "count=64", "conv=fsync"}},
			agent.ExecIO{Stdout: &out, Stderr: &out})
		wrote <- result{res, out.String(), err}
	}()

	want := "guest I/O error on disk overlay: no space left on device; free space on the host filesystem and resume"
	got := waitState(t, d, in.ID, state.Paused, 60*time.Second)
	if got.StateError == nil || *got.StateError != want {
		t.Fatalf("state_error %q, want %q", deref(got.StateError), want)
	}
	var log []string
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(strings.Join(log, "\n"), want); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("hypeman log does not say why: %q", log)
		}
		log = nil
		d.Instances.StreamLogs(ctx, in.ID, instances.LogOptions{Source: instances.LogHypeman, Tail: 20}, func(l string) error {
			log = append(log, l)
			return nil
		})
	}
	select {
	case r := <-wrote:
		t.Fatalf("the write finished while the disk was full: %+v", r)
	default:
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	res, err := d.Instances.Resume(ctx, in.ID)
	if err != nil || res.StateError != nil || (res.State != state.Running && res.State != state.Initializing) {
		t.Fatalf("resume: %v %+v (%s)", err, res, deref(res.StateError))
	}
	select {
	case r := <-wrote:
		if r.err != nil || r.res.ExitCode != 0 {
			t.Fatalf("write after resume: %v %+v %s", r.err, r.res, r.out)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the write did not finish after resume")
	}
	if got := mustGet(t, d, in.ID); got.State != state.Running || got.StateError != nil {
		t.Fatalf("after the write: %s (%s)", got.State, deref(got.StateError))
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
