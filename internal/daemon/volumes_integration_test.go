package daemon_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"hypeman/internal/guest/agent"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/testutil/testimage"
	"hypeman/internal/volumes"
)

// testVolumes makes volumes in the daemon's own store (internal/volumes),
// through the same calls the API uses.
type testVolumes struct{ s *volumes.Store }

// create makes volume name (1 GiB, sparse) holding the files (path →
// content, mode 0640, owned by root) in its root.
func (tv testVolumes) create(t testing.TB, name string, files map[string]string) string {
	t.Helper()
	p := volumes.CreateParams{Name: name, SizeGB: 1}
	var v *volumes.Volume
	var err error
	if len(files) == 0 {
		v, err = tv.s.Create(context.Background(), p)
	} else {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		tw := tar.NewWriter(zw)
		for path, content := range files {
			if err := tw.WriteHeader(&tar.Header{Name: path, Mode: 0o640, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
				t.Fatal(err)
			}
			tw.Write([]byte(content))
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		zw.Close()
		v, err = tv.s.CreateFromArchive(context.Background(), p, &buf)
	}
	if err != nil {
		t.Fatalf("volume %s: %v", name, err)
	}
	return v.ID
}

func (tv testVolumes) get(t testing.TB, id string) *volumes.Volume {
	t.Helper()
	v, err := tv.s.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (tv testVolumes) attachments(t testing.TB, id string) int {
	return len(tv.get(t, id).Attachments)
}

// TestVolumesInGuests runs the volume acceptance flows on one daemon and
// real VMs (sequential subtests: each builds on the volumes' state).
func TestVolumesInGuests(t *testing.T) {
	d := newDaemon(t)
	store := testVolumes{d.Volumes}
	host := testimage.Registry(t)
	ref := testimage.Push(t, host, "test/vol", testimage.Busybox(t, testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"exec sleep 100000"},
	}))
	ctx := context.Background()
	data := store.create(t, "data", nil)
	shared := store.create(t, "shared", map[string]string{"hello.txt": "hello from the volume\n"})
	sharedSum := fileSum(t, store.get(t, shared).Path)

	run := func(t *testing.T, name string, vols ...instances.VolumeMount) *instances.Instance {
		t.Helper()
		start := time.Now()
		in, err := d.Instances.Create(ctx, instances.CreateParams{Name: name, Image: ref, Size: "256MB", VCPUs: 1, Volumes: vols})
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		in = waitState(t, d, in.ID, state.Running, bootTimeout)
		t.Logf("%s: Running %s after create (%d volumes)", name, time.Since(start).Round(time.Millisecond), len(vols))
		return in
	}
	stop := func(t *testing.T, id string) {
		t.Helper()
		if _, err := d.Instances.Stop(ctx, id, instances.StopParams{}); err != nil {
			t.Fatal(err)
		}
		waitState(t, d, id, state.Stopped, bootTimeout)
	}

	t.Run("writable volume outlives its instance", func(t *testing.T) {
		a := run(t, "writer", instances.VolumeMount{VolumeID: "data", MountPath: "/data"})
		guestRun(t, d, a.ID, "sh", "-c", "echo written-by-a > /data/note && sync")
		// A writable volume is one instance's.
		_, err := d.Instances.Create(ctx, instances.CreateParams{Name: "second", Image: ref, Volumes: []instances.VolumeMount{{VolumeID: data, MountPath: "/d", ReadOnly: true}}})
		if !errors.Is(err, instances.ErrVolumeInUse) {
			t.Fatalf("second attach of a writable volume: %v", err)
		}
		if err := d.Instances.Delete(ctx, a.ID); err != nil {
			t.Fatal(err)
		}
		if n := store.attachments(t, data); n != 0 {
			t.Fatalf("delete left %d attachments", n)
		}
		b := run(t, "reader", instances.VolumeMount{VolumeID: data, MountPath: "/mnt/deep/data"})
		if got := guestRun(t, d, b.ID, "cat", "/mnt/deep/data/note"); got != "written-by-a\n" {
			t.Fatalf("second instance reads %q", got)
		}

		// Standby/restore keeps the mount and the data.
		guestRun(t, d, b.ID, "sh", "-c", "echo before-standby >> /mnt/deep/data/note")
		if _, err := d.Instances.Fork(ctx, b.ID, instances.ForkParams{Name: "nofork", FromRunning: true}); !errors.Is(err, instances.ErrVolumeInUse) ||
			!strings.Contains(err.Error(), "/mnt/deep/data") {
			t.Fatalf("fork with a writable volume: %v", err)
		}
		if _, err := d.Instances.Standby(ctx, b.ID, instances.StandbyParams{}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Instances.Restore(ctx, b.ID); err != nil {
			t.Fatal(err)
		}
		waitState(t, d, b.ID, state.Running, bootTimeout)
		if got := guestRun(t, d, b.ID, "sh", "-c", "grep -c ' /mnt/deep/data ext4 rw' /proc/mounts; cat /mnt/deep/data/note"); got != "1\nwritten-by-a\nbefore-standby\n" {
			t.Fatalf("after restore: %q", got)
		}
		// A graceful stop unmounts the volume before power-off: the
		// unsynced write is on the disk and the filesystem is clean.
		guestRun(t, d, b.ID, "sh", "-c", "echo unsynced >> /mnt/deep/data/note")
		stop(t, b.ID)
		path := store.get(t, data).Path
		if out, err := exec.Command("debugfs", "-R", "cat /note", path).Output(); err != nil || string(out) != "written-by-a\nbefore-standby\nunsynced\n" {
			t.Fatalf("volume after a graceful stop: %v %q", err, out)
		}
		if out, err := exec.Command("dumpe2fs", "-h", path).CombinedOutput(); err != nil || !regexp.MustCompile(`Filesystem state:\s+clean\n`).Match(out) {
			t.Fatalf("volume not cleanly unmounted: %v\n%s", err, out)
		}
		if err := d.Instances.Delete(ctx, b.ID); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("read-only volume in two running instances", func(t *testing.T) {
		var ids []string
		for _, name := range []string{"ro1", "ro2"} {
			in := run(t, name, instances.VolumeMount{VolumeID: "shared", MountPath: "/shared", ReadOnly: true})
			ids = append(ids, in.ID)
		}
		for _, id := range ids {
			if got := guestRun(t, d, id, "sh", "-c", "cat /shared/hello.txt; stat -c %a /shared/hello.txt"); got != "hello from the volume\n640\n" {
				t.Fatalf("%s reads %q", id, got)
			}
			out, code, err := guestExec(t, d, id, "touch", "/shared/x")
			if err != nil || code == 0 || !strings.Contains(out, "Read-only file system") {
				t.Fatalf("write to a read-only volume: exit %d %v %q", code, err, out)
			}
		}
		for _, id := range ids {
			if err := d.Instances.Delete(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("overlay writes stay each instance's own", func(t *testing.T) {
		ov := instances.VolumeMount{VolumeID: "shared", MountPath: "/work", ReadOnly: true, Overlay: true, OverlaySize: "32MB"}
		o1, o2 := run(t, "ov1", ov), run(t, "ov2", ov)
		guestRun(t, d, o1.ID, "sh", "-c", "echo mine > /work/o1.txt && echo changed > /work/hello.txt && sync")
		if got := guestRun(t, d, o1.ID, "cat", "/work/o1.txt", "/work/hello.txt"); got != "mine\nchanged\n" {
			t.Fatalf("ov1 sees %q", got)
		}
		if got := guestRun(t, d, o2.ID, "sh", "-c", "cat /work/hello.txt; ls /work"); got != "hello from the volume\nhello.txt\nlost+found\n" {
			t.Fatalf("ov2 sees %q", got)
		}
		// A fork from Running continues with the same read-only volume and
		// its own copy of the overlay layer.
		f, err := d.Instances.Fork(ctx, o1.ID, instances.ForkParams{Name: "ov1-fork", FromRunning: true})
		if err != nil {
			t.Fatal(err)
		}
		waitState(t, d, f.ID, state.Running, bootTimeout)
		guestRun(t, d, f.ID, "sh", "-c", "echo fork > /work/o1.txt && sync")
		if got := guestRun(t, d, o1.ID, "cat", "/work/o1.txt"); got != "mine\n" {
			t.Fatalf("the fork's write reached its source: %q", got)
		}
		if got := guestRun(t, d, f.ID, "cat", "/work/o1.txt", "/work/hello.txt"); got != "fork\nchanged\n" {
			t.Fatalf("fork sees %q", got)
		}
		if n := store.attachments(t, shared); n != 3 {
			t.Fatalf("shared has %d attachments, want 3 (ov1, ov2, fork)", n)
		}
		if err := d.Instances.Delete(ctx, f.ID); err != nil {
			t.Fatal(err)
		}
		stop(t, o1.ID)
		// Its writes survive a reboot (the overlay disk is the instance's).
		if _, err := d.Instances.Start(ctx, o1.ID, instances.StartParams{}); err != nil {
			t.Fatal(err)
		}
		waitState(t, d, o1.ID, state.Running, bootTimeout)
		if got := guestRun(t, d, o1.ID, "cat", "/work/o1.txt"); got != "mine\n" {
			t.Fatalf("ov1 after reboot: %q", got)
		}
		for _, id := range []string{o1.ID, o2.ID} {
			if err := d.Instances.Delete(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
		if fileSum(t, store.get(t, shared).Path) != sharedSum {
			t.Fatal("the read-only volume changed under overlay mounts")
		}
	})

	t.Run("detach and attach on a Stopped instance", func(t *testing.T) {
		in := run(t, "roundtrip", instances.VolumeMount{VolumeID: "shared", MountPath: "/shared", ReadOnly: true})
		var te *instances.TransitionError
		if _, err := d.Instances.DetachVolume(ctx, in.ID, "shared"); !errors.As(err, &te) {
			t.Fatalf("detach while Running: %v", err)
		}
		stop(t, in.ID)
		if _, err := d.Instances.DetachVolume(ctx, in.ID, "shared"); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Instances.Start(ctx, in.ID, instances.StartParams{}); err != nil {
			t.Fatal(err)
		}
		waitState(t, d, in.ID, state.Running, bootTimeout)
		if got := guestRun(t, d, in.ID, "sh", "-c", "grep -c /shared /proc/mounts; ls /shared"); got != "0\n" {
			t.Fatalf("after detach: %q", got)
		}
		stop(t, in.ID)
		if _, err := d.Instances.AttachVolume(ctx, in.ID, "shared", instances.VolumeMount{MountPath: "/again", ReadOnly: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Instances.Start(ctx, in.ID, instances.StartParams{}); err != nil {
			t.Fatal(err)
		}
		waitState(t, d, in.ID, state.Running, bootTimeout)
		if got := guestRun(t, d, in.ID, "cat", "/again/hello.txt"); got != "hello from the volume\n" {
			t.Fatalf("after attach: %q", got)
		}
		if err := d.Instances.Delete(ctx, in.ID); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a mount failure is a clear init failure", func(t *testing.T) {
		// Not ext4: the guest cannot mount it and says which volume.
		raw := store.create(t, "raw", nil)
		if err := os.WriteFile(store.get(t, raw).Path, make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		in, err := d.Instances.Create(ctx, instances.CreateParams{Name: "badmount", Image: ref, Size: "256MB", VCPUs: 1,
			Volumes: []instances.VolumeMount{{VolumeID: "raw", MountPath: "/raw", ReadOnly: true}}})
		if err != nil {
			t.Fatal(err)
		}
		got := waitState(t, d, in.ID, state.Stopped, bootTimeout)
		if got.ExitMessage == nil || !strings.Contains(*got.ExitMessage, "volume hm-vol0 at /raw") {
			t.Fatalf("exit message %v\n%s", got.ExitMessage, serialLog(t, d, in.ID))
		}
		t.Logf("exit message: %s", *got.ExitMessage)
	})
}

// BenchmarkBootWithVolume measures what one volume adds to Create →
// Running: the same image booted with no volume and with one read-only
// volume (its mount point created in the root at boot).
func BenchmarkBootWithVolume(b *testing.B) {
	d := newDaemonB(b)
	store := testVolumes{d.Volumes}
	host := testimage.Registry(b)
	ref := testimage.Push(b, host, "bench/vol", testimage.Busybox(b, testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"exec sleep 600"},
	}))
	store.create(b, "bench", map[string]string{"f": "x"})
	ctx := context.Background()
	if _, err := d.Images.Pull(ctx, ref); err != nil {
		b.Fatal(err)
	}
	// boot returns the wall time from Create to Running and the guest
	// init's own time from reading its config to a ready root (volume
	// mounts included), from the kernel log's timestamps.
	boot := func(name string, vols []instances.VolumeMount) (wall, guest time.Duration) {
		start := time.Now()
		in, err := d.Instances.Create(ctx, instances.CreateParams{Name: name, Image: ref, Size: "256MB", VCPUs: 1, Volumes: vols})
		if err != nil {
			b.Fatal(err)
		}
		res, err := d.Instances.WaitForState(ctx, in.ID, []state.State{state.Running}, 2*time.Minute)
		if err != nil || res.State != state.Running {
			b.Fatalf("wait: %v %+v", err, res)
		}
		wall = time.Since(start)
		var out strings.Builder
		if _, err := d.Instances.Exec(ctx, in.ID, agent.ExecRequest{Argv: []string{"dmesg"}}, agent.ExecIO{Stdout: &out}); err != nil {
			b.Fatal(err)
		}
		guest = kmsgSpan(b, out.String(), "msg=config", "msg=\"root ready\"")
		if err := d.Instances.Delete(ctx, in.ID); err != nil {
			b.Fatal(err)
		}
		return wall, guest
	}
	var without, with, gWithout, gWith time.Duration
	for i := 0; i < b.N; i++ {
		w, g := boot(fmt.Sprintf("plain%d", i), nil)
		without, gWithout = without+w, gWithout+g
		w, g = boot(fmt.Sprintf("vol%d", i), []instances.VolumeMount{{VolumeID: "bench", MountPath: "/data", ReadOnly: true}})
		with, gWith = with+w, gWith+g
	}
	n := float64(b.N)
	b.ReportMetric(without.Seconds()/n, "no-volume-s/op")
	b.ReportMetric(with.Seconds()/n, "one-volume-s/op")
	b.ReportMetric(float64(gWithout.Microseconds())/1000/n, "guest-root-no-volume-ms/op")
	b.ReportMetric(float64(gWith.Microseconds())/1000/n, "guest-root-one-volume-ms/op")
}

// kmsgSpan is the time between the first kernel log lines containing from
// and to (dmesg's "[   1.234567]" stamps).
func kmsgSpan(b *testing.B, dmesg, from, to string) time.Duration {
	stamp := func(sub string) float64 {
		for _, line := range strings.Split(dmesg, "\n") {
			if !strings.Contains(line, sub) {
				continue
			}
			var sec float64
			if _, err := fmt.Sscanf(strings.TrimLeft(line, "[ "), "%f]", &sec); err == nil {
				return sec
			}
		}
		b.Fatalf("no kernel log line with %q in:\n%s", sub, dmesg)
		return 0
	}
	return time.Duration((stamp(to) - stamp(from)) * float64(time.Second))
}
