package qemu

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"hypeman/internal/procfs"
)

func TestIsQEMUCmdline(t *testing.T) {
	if !isQEMUCmdline([]byte("/usr/bin/qemu-system-x86_64\x00-machine\x00microvm\x00")) {
		t.Fatal("qemu not recognised")
	}
	if isQEMUCmdline([]byte("/bin/sleep\x00qemu-system-x86_64\x00")) {
		t.Fatal("sleep recognised as qemu")
	}
}

func TestPidFileRoundTrip(t *testing.T) {
	p := filepath.Join(t.TempDir(), PidFileName)
	want := PidFile{Pid: 1234, StartTime: 567890}
	if err := writePidFile(p, want); err != nil {
		t.Fatal(err)
	}
	got, err := readPidFile(p)
	if err != nil || got != want {
		t.Fatalf("got %+v %v", got, err)
	}
	os.WriteFile(p, []byte(`{"pid":0}`), 0o644)
	if _, err := readPidFile(p); err == nil {
		t.Fatal("pid 0 accepted")
	}
}

func startSleep(t *testing.T) (*exec.Cmd, PidFile, <-chan struct{}) {
	t.Helper()
	cmd := exec.Command("sleep", "30")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	st, err := procfs.ReadStat(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	reaped := make(chan struct{})
	go func() { cmd.Wait(); close(reaped) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-reaped })
	return cmd, PidFile{Pid: cmd.Process.Pid, StartTime: st.StartTime}, reaped
}

func TestCheckProcess(t *testing.T) {
	_, pf, reaped := startSleep(t)
	// Alive, right start time, but not qemu.
	if err := checkProcess(pf); !errors.Is(err, errStale) {
		t.Fatalf("sleep accepted as qemu: %v", err)
	}
	// Pid reuse: same pid, different start time.
	if err := checkProcess(PidFile{Pid: pf.Pid, StartTime: pf.StartTime + 1}); !errors.Is(err, errStale) {
		t.Fatalf("start time mismatch accepted: %v", err)
	}
	syscall.Kill(pf.Pid, syscall.SIGKILL)
	<-reaped
	if err := checkProcess(pf); !errors.Is(err, errStale) {
		t.Fatalf("dead process: %v", err)
	}
}

func TestWatchExitPidfd(t *testing.T) {
	_, pf, reaped := startSleep(t)
	// watchExit re-checks identity (qemu cmdline) for pidfds; the helper
	// below tests the mechanism without that check.
	done, stop, err := watchPid(pf.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	select {
	case <-done:
		t.Fatal("done before exit")
	case <-time.After(50 * time.Millisecond):
	}
	syscall.Kill(pf.Pid, syscall.SIGKILL)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("pidfd watch did not fire")
	}
	<-reaped
}

func TestWatchExitStopReleases(t *testing.T) {
	_, pf, _ := startSleep(t)
	done, stop, err := watchPid(pf.Pid)
	if err != nil {
		t.Fatal(err)
	}
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("stop blocked")
	}
	select {
	case <-done:
		t.Fatal("done closed by stop")
	default:
	}
}

func TestWatchExitRejectsNonQEMU(t *testing.T) {
	_, pf, _ := startSleep(t)
	if _, _, err := watchExit(pf, time.Second); !errors.Is(err, errStale) {
		t.Fatalf("watchExit on sleep: %v", err)
	}
}

// watchPid is watchExit's pidfd mechanism without the qemu identity check.
func watchPid(pid int) (<-chan struct{}, func(), error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil, nil, err
	}
	return watchPidfd(fd, pid)
}
