package daemon_test

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"hypeman/internal/daemon"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/testutil/testimage"
)

// counterImage counts in memory (the shell variable), prints the count and
// the guest uptime, and writes the count to its writable disk.
func counterImage(t testing.TB) testimage.Options {
	return testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd: []string{"mkdir -p /data; i=0; while true; do i=$((i+1)); " +
			"echo \"count $i up $(cut -d' ' -f1 /proc/uptime)\"; echo $i > /data/count; sleep 0.3; done"},
	}
}

var countRE = regexp.MustCompile(`count (\d+) up ([\d.]+)`)

// lastCount returns the last counter value and uptime in the serial log.
func lastCount(t *testing.T, d *daemon.Daemon, id string) (int, float64) {
	t.Helper()
	m := countRE.FindAllStringSubmatch(serialLog(t, d, id), -1)
	if len(m) == 0 {
		t.Fatalf("no counter output for %s:\n%s", id, serialLog(t, d, id))
	}
	n, _ := strconv.Atoi(m[len(m)-1][1])
	up, _ := strconv.ParseFloat(m[len(m)-1][2], 64)
	return n, up
}

// counts returns every counter value printed after offset bytes of the log.
func countsAfter(t *testing.T, d *daemon.Daemon, id string, offset int) []int {
	var out []int
	log := serialLog(t, d, id)
	if offset > len(log) {
		return nil
	}
	for _, m := range countRE.FindAllStringSubmatch(log[offset:], -1) {
		n, _ := strconv.Atoi(m[1])
		out = append(out, n)
	}
	return out
}

func waitCountAbove(t *testing.T, d *daemon.Daemon, id string, n int) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if m := countRE.FindAllStringSubmatch(serialLog(t, d, id), -1); len(m) > 0 {
			if c, _ := strconv.Atoi(m[len(m)-1][1]); c > n {
				return c
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: counter never passed %d:\n%s", id, n, serialLog(t, d, id))
	return 0
}

func processAlive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

func TestStandbyRestoreContinuesProgram(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	host := testimage.Registry(t)
	ref := testimage.Push(t, host, "test/counter", testimage.Busybox(t, counterImage(t)))
	ctx := context.Background()
	in, err := d.Instances.Create(ctx, instances.CreateParams{Name: "counter", Image: ref, Size: "256MB", VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, d, in.ID, state.Running, bootTimeout)
	waitCountAbove(t, d, in.ID, 5)
	pid := mustGet(t, d, in.ID).Pid

	sb, err := d.Instances.Standby(ctx, in.ID, instances.StandbyParams{})
	if err != nil {
		t.Fatal(err)
	}
	if sb.State != state.Standby || !sb.HasSnapshot || sb.Pid != 0 {
		t.Fatalf("after standby: %+v", sb)
	}
	if processAlive(pid) {
		t.Fatalf("qemu pid %d still alive in standby", pid)
	}
	// QEMU is gone (checked above), so nothing can advance the counter
	// while in standby: no need to wait to prove it.
	atStandby, upAtStandby := lastCount(t, d, in.ID)
	offset := len(serialLog(t, d, in.ID))

	rs, err := d.Instances.Restore(ctx, in.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rs.State != state.Running || rs.HasSnapshot {
		t.Fatalf("after restore: %+v", rs)
	}
	waitCountAbove(t, d, in.ID, atStandby+3)
	after := countsAfter(t, d, in.ID, offset)
	if len(after) == 0 || after[0] != atStandby+1 {
		t.Fatalf("counter did not continue: was %d at standby, then %v", atStandby, after)
	}
	if _, up := lastCount(t, d, in.ID); up < upAtStandby {
		t.Fatalf("guest uptime went back: %.2f → %.2f", upAtStandby, up)
	}
	// State transitions are in the instance log, and the program is still
	// controllable: a graceful stop works after a restore.
	st, err := d.Instances.Stop(ctx, in.ID, instances.StopParams{})
	if err != nil || st.State != state.Stopped {
		t.Fatalf("stop after restore: %v %+v", err, st)
	}
}

func TestForkFromStandbyAndRunning(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	host := testimage.Registry(t)
	ref := testimage.Push(t, host, "test/counter", testimage.Busybox(t, counterImage(t)))
	ctx := context.Background()
	src, err := d.Instances.Create(ctx, instances.CreateParams{Name: "src", Image: ref, Size: "256MB", VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, d, src.ID, state.Running, bootTimeout)
	waitCountAbove(t, d, src.ID, 3)

	// Fork from Running (source goes to standby and back).
	if _, err := d.Instances.Fork(ctx, src.ID, instances.ForkParams{Name: "f1"}); err == nil {
		t.Fatal("fork of a Running instance without from_running must fail")
	}
	f1, err := d.Instances.Fork(ctx, src.ID, instances.ForkParams{Name: "f1", FromRunning: true})
	if err != nil {
		t.Fatal(err)
	}
	if f1.State != state.Running || f1.ID == src.ID {
		t.Fatalf("fork: %+v", f1)
	}
	if s := mustGet(t, d, src.ID); s.State != state.Running {
		t.Fatalf("source after fork-from-running: %s", s.State)
	}
	atFork, _ := lastCount(t, d, src.ID)
	// Both continue independently from the same value.
	got := waitCountAbove(t, d, f1.ID, atFork+2)
	first := countsAfter(t, d, f1.ID, 0)
	if first[0] != atFork+1 && first[0] != atFork {
		t.Fatalf("fork started at %d, source was at %d", first[0], atFork)
	}
	waitCountAbove(t, d, src.ID, atFork+2)
	_ = got

	// Fork from Standby: the source stays in Standby, and so does the fork
	// unless asked otherwise (hypeman's default: the source's state).
	if _, err := d.Instances.Standby(ctx, src.ID, instances.StandbyParams{}); err != nil {
		t.Fatal(err)
	}
	atStandby, _ := lastCount(t, d, src.ID)
	f2, err := d.Instances.Fork(ctx, "src", instances.ForkParams{Name: "f2"})
	if err != nil {
		t.Fatal(err)
	}
	if s := mustGet(t, d, src.ID); s.State != state.Standby || f2.State != state.Standby {
		t.Fatalf("after fork-from-standby: source %s, fork %s", s.State, f2.State)
	}
	if f2, err = d.Instances.Restore(ctx, f2.ID); err != nil || f2.State != state.Running {
		t.Fatalf("restore the fork: %v %v", f2, err)
	}
	waitCountAbove(t, d, f2.ID, atStandby+2)
	if c := countsAfter(t, d, f2.ID, 0); c[0] != atStandby+1 {
		t.Fatalf("fork from standby started at %d, want %d", c[0], atStandby+1)
	}

	// Separate disks: stop f2 early, let f1 run on; their /data/count differ.
	if _, err := d.Instances.Stop(ctx, f2.ID, instances.StopParams{}); err != nil {
		t.Fatal(err)
	}
	waitCountAbove(t, d, f1.ID, atStandby+15)
	if _, err := d.Instances.Stop(ctx, f1.ID, instances.StopParams{}); err != nil {
		t.Fatal(err)
	}
	c1 := diskCount(t, d, f1.ID)
	c2 := diskCount(t, d, f2.ID)
	if c1 <= c2 || c2 <= atStandby {
		t.Fatalf("disk counts: f1 %d, f2 %d (standby at %d): forks do not write separate disks", c1, c2, atStandby)
	}
}

// diskCount reads /data/count from an instance's writable overlay disk
// (ext4 image, overlay upper dir) with debugfs, without mounting it.
func diskCount(t *testing.T, d *daemon.Daemon, id string) int {
	t.Helper()
	disk := filepath.Join(d.Config.Paths().InstanceDir(id), "overlay.ext4")
	out, err := exec.Command("debugfs", "-R", "cat /upper/data/count", disk).Output()
	if err != nil {
		t.Fatalf("debugfs %s: %v", disk, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("count file %q: %v", out, err)
	}
	return n
}

var _ = fmt.Sprint
