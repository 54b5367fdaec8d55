package daemon_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/testutil/testimage"
)

// BenchmarkBootToProgramStart compares the time from Create to Running (the
// guest printed the program-start marker) through the whole stack with a
// raw qemu-system-x86_64 run of the very same argv (same kernel, initrd,
// disks) from exec to the marker. The ratio is our stack's overhead.
func BenchmarkBootToProgramStart(b *testing.B) {
	d := newDaemonB(b)
	host := testimage.Registry(b)
	ref := testimage.Push(b, host, "bench/sleep", testimage.Busybox(b, testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo up; sleep 600"},
	}))
	ctx := context.Background()
	if _, err := d.Images.Pull(ctx, ref); err != nil {
		b.Fatal(err)
	}
	var stack, raw time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		in, err := d.Instances.Create(ctx, instances.CreateParams{Name: fmt.Sprintf("b%d", i), Image: ref, Size: "512MB", VCPUs: 1})
		if err != nil {
			b.Fatal(err)
		}
		res, err := d.Instances.WaitForState(ctx, in.ID, []state.State{state.Running}, 2*time.Minute)
		if err != nil || res.State != state.Running {
			b.Fatalf("wait: %v %+v", err, res)
		}
		stack += time.Since(start)
		dir := d.Config.Paths().InstanceDir(in.ID)
		argv := readArgv(b, dir)
		if err := d.Instances.Delete(ctx, in.ID); err != nil {
			b.Fatal(err)
		}
		raw += rawBoot(b, argv, dir, d.Config.Paths().Root)
	}
	b.ReportMetric(stack.Seconds()/float64(b.N), "stack-s/op")
	b.ReportMetric(raw.Seconds()/float64(b.N), "raw-s/op")
	b.ReportMetric(float64(stack)/float64(raw), "stack/raw")
}

func readArgv(b *testing.B, dir string) []string {
	var rec struct {
		Argv []string `json:"argv"`
	}
	data, err := os.ReadFile(filepath.Join(dir, "qemu.args.json"))
	if err != nil {
		b.Fatal(err)
	}
	if err := json.Unmarshal(data, &rec); err != nil || len(rec.Argv) == 0 {
		b.Fatalf("launch record: %v", err)
	}
	return rec.Argv
}

// rawBoot re-runs argv in a scratch copy of the instance's disks (a fresh
// overlay, the same config) and times exec → program-start marker.
func rawBoot(b *testing.B, argv []string, instDir, root string) time.Duration {
	scratch, err := os.MkdirTemp(root, "rawboot-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(scratch)
	ov := filepath.Join(scratch, "overlay.ext4")
	if out, err := exec.Command("sh", "-c", "truncate -s 1G "+ov+" && mkfs.ext4 -q -F "+ov).CombinedOutput(); err != nil {
		b.Fatalf("%v %s", err, out)
	}
	cfg, err := (&guestconfig.Config{Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo up; sleep 600"}, RootFS: "erofs"}).Encode()
	if err != nil {
		b.Fatal(err)
	}
	os.WriteFile(filepath.Join(scratch, "config.raw"), cfg, 0o644)
	serial := filepath.Join(scratch, "serial.log")
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = scratch
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if data, _ := os.ReadFile(serial); bytes.Contains(data, []byte(guestconfig.MarkerProgramStart)) {
			return time.Since(start)
		}
		time.Sleep(5 * time.Millisecond)
	}
	data, _ := os.ReadFile(serial)
	b.Fatalf("raw boot never reached the marker:\n%s", strings.TrimSpace(string(data)))
	return 0
}
