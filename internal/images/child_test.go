package images

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/random"
)

// daemonEnv makes the test binary act as a daemon converting an image (see
// runConvertingDaemon); TestMain dispatches on it.
const daemonEnv = "IMAGES_TEST_CONVERTING_DAEMON"

// runConvertingDaemon imports an image into a store in $IMAGES_TEST_DIR and
// blocks (its mkfs.erofs is the test's fake that never finishes).
func runConvertingDaemon() {
	s, err := New(Config{Dir: os.Getenv("IMAGES_TEST_DIR"), DiskFormat: DiskErofs, Keychain: authn.NewMultiKeychain()}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	img, err := random.Image(1024, 1)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if _, err := s.ImportImage(context.Background(), "crash/app:v1", img); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	select {}
}

// A daemon killed with -9 while mkfs.erofs builds a root disk does not
// leave the mkfs running.
func TestMkfsDiesWithTheDaemon(t *testing.T) {
	needsChown(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	pidFile := filepath.Join(dir, "mkfs.pid")
	fake := "#!/bin/sh\necho $$ > " + pidFile + ".tmp && mv " + pidFile + ".tmp " + pidFile + "\nexec sleep 1000\n"
	if err := os.WriteFile(filepath.Join(bin, "mkfs.erofs"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	daemon := exec.Command(os.Args[0], "-test.run=^$")
	daemon.Env = append(os.Environ(), daemonEnv+"=1", "IMAGES_TEST_DIR="+filepath.Join(dir, "store"),
		"PATH="+bin+":"+os.Getenv("PATH"))
	var out strings.Builder
	daemon.Stdout, daemon.Stderr = &out, &out
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { daemon.Wait(); close(exited) }()
	var pid int
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if b, err := os.ReadFile(pidFile); err == nil {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
			break
		}
		select {
		case <-exited:
			t.Fatalf("daemon exited before running mkfs: %s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			daemon.Process.Kill()
			t.Fatalf("mkfs never started: %s", out.String())
		}
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	daemon.Process.Signal(syscall.SIGKILL)
	<-exited
	for deadline := time.Now().Add(10 * time.Second); processAlive(pid); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("mkfs.erofs (pid %d) outlived the killed daemon", pid)
		}
	}
}

// processAlive: the process exists and is not a zombie.
func processAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
