package guestinit

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/hypervisor/qemu"
	"hypeman/internal/paths"
	"hypeman/internal/system"
	"hypeman/internal/testutil/tier"
)

// vmKit boots the real init in a real VM (QEMU microvm, TCG): the init is
// built from this tree, the initrd by internal/system, the image disk is an
// erofs of busybox, the overlay disk a fresh ext4.
type vmKit struct {
	kernel *system.Kernel
	initrd string
	qemu   string
	tscKHz int
	// cmdline is the kernel command line before tsc_early_khz.
	cmdline string
	// extraArgs are appended to the QEMU command line.
	extraArgs []string
	// netns, when set, is the network namespace QEMU runs in (where its
	// TAP device lives).
	netns string
}

func kernelDir() string {
	if d := os.Getenv("HYPEMAN_KERNEL_DIR"); d != "" {
		return d
	}
	root := os.Getenv("HYPEMAN_DATA_DIR")
	if root == "" {
		root = "/var/lib/hypeman"
	}
	return paths.New(root).KernelDir()
}

func newVMKit(t *testing.T) *vmKit {
	t.Helper()
	tier.VM(t)
	tier.Tools(t, "qemu-system-x86_64", "mkfs.erofs", "mkfs.ext4", "e2fsck", "debugfs")
	tier.File(t, "/usr/bin/busybox", "Debian busybox-static: run the setup step (make setup)")
	dir := kernelDir()
	k, err := system.LoadKernel(dir)
	if err != nil {
		tier.Missing(t, "no guest kernel in %s (set HYPEMAN_KERNEL_DIR or run make setup): %v", dir, err)
	}
	work := t.TempDir()
	initBin := filepath.Join(work, "init")
	build := exec.Command("go", "build", "-o", initBin, "hypeman/cmd/hypeman-init")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build init: %v\n%s", err, out)
	}
	initrd, err := system.BuildInitrd(context.Background(), system.InitrdSpec{InitBinary: initBin, Kernel: k}, work)
	if err != nil {
		t.Fatalf("build initrd: %v", err)
	}
	khz, _, err := qemu.DetectTSCKHz(context.Background(), qemu.Host{})
	if err != nil {
		t.Fatalf("host TSC rate: %v", err)
	}
	return &vmKit{kernel: k, initrd: initrd, qemu: "qemu-system-x86_64", tscKHz: khz,
		cmdline: "console=ttyS0 panic=-1 quiet rdinit=/init"}
}

// imageFile is a file put in the test image.
type imageFile struct {
	data string
	mode os.FileMode
}

// buildImage writes an erofs image: busybox with its applets in /bin plus
// files (path → content).
func buildImage(t *testing.T, files map[string]imageFile) string {
	t.Helper()
	stage := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(stage, "bin"), 0o755))
	bb, err := os.ReadFile("/usr/bin/busybox")
	must(err)
	must(os.WriteFile(filepath.Join(stage, "bin/busybox"), bb, 0o755))
	out, err := exec.Command("/usr/bin/busybox", "--list").Output()
	must(err)
	for _, app := range strings.Fields(string(out)) {
		if app != "busybox" {
			must(os.Symlink("busybox", filepath.Join(stage, "bin", app)))
		}
	}
	for p, f := range files {
		full := filepath.Join(stage, p)
		must(os.MkdirAll(filepath.Dir(full), 0o755))
		mode := f.mode
		if mode == 0 {
			mode = 0o644
		}
		must(os.WriteFile(full, []byte(f.data), mode))
		must(os.Chmod(full, mode))
	}
	img := filepath.Join(t.TempDir(), "root.erofs")
	if out, err := exec.Command("mkfs.erofs", "--quiet", "--all-root", img, stage).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.erofs: %v\n%s", err, out)
	}
	return img
}

// newOverlayDisk makes an empty ext4 disk, as the host does.
func newOverlayDisk(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "overlay.ext4")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", p).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	return p
}

type vmRun struct {
	dir       string
	logPath   string
	agentSock string
	cmd       *exec.Cmd
	done      chan error
}

// start boots a VM. The config disk is written from cfg; root and overlay are
// disk image paths (overlay "" means no overlay disk).
func (k *vmKit) start(t *testing.T, cfg *guestconfig.Config, root, overlay string) *vmRun {
	t.Helper()
	dir, err := os.MkdirTemp("", "hm-vm-") // short: unix socket path limit
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	raw, err := cfg.Encode()
	if err != nil {
		t.Fatal(err)
	}
	cfgDisk := filepath.Join(dir, "config.img")
	if err := os.WriteFile(cfgDisk, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	r := &vmRun{dir: dir, logPath: filepath.Join(dir, "serial.log"), agentSock: filepath.Join(dir, "agent.sock"), done: make(chan error, 1)}
	args := []string{
		"-machine", "microvm,accel=tcg,isa-serial=on,rtc=on", "-cpu", "max", "-m", "256M", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", k.kernel.BootImage(), "-initrd", k.initrd,
		"-append", fmt.Sprintf("%s tsc_early_khz=%d", k.cmdline, k.tscKHz),
		"-chardev", "file,id=ser0,path=" + r.logPath, "-serial", "chardev:ser0",
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,path=" + r.agentSock + ",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=" + guestconfig.AgentPortName,
	}
	disk := func(id, file, serial string, ro bool) {
		d := "if=none,id=" + id + ",format=raw,file=" + file
		if ro {
			d += ",readonly=on"
		}
		args = append(args, "-drive", d, "-device", "virtio-blk-device,drive="+id+",serial="+serial)
	}
	disk("cfg", cfgDisk, guestconfig.SerialConfig, true)
	if root != "" {
		disk("root", root, guestconfig.SerialRoot, true)
	}
	if overlay != "" {
		disk("ovl", overlay, guestconfig.SerialOverlay, false)
	}
	args = append(args, k.extraArgs...)
	if k.netns != "" {
		// ip netns exec execs QEMU: the PID stays QEMU's.
		r.cmd = exec.Command("ip", append([]string{"netns", "exec", k.netns, k.qemu}, args...)...)
	} else {
		r.cmd = exec.Command(k.qemu, args...)
	}
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stderr strings.Builder
	r.cmd.Stderr = &stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	go func() {
		err := r.cmd.Wait()
		if err != nil {
			err = fmt.Errorf("%w: %s", err, stderr.String())
		}
		r.done <- err
	}()
	t.Cleanup(func() {
		if r.cmd.ProcessState == nil {
			_ = r.cmd.Process.Kill()
			<-r.done
		}
	})
	// QEMU creates the agent socket right away.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(r.agentSock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu did not create %s", r.agentSock)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return r
}

func (r *vmRun) log() string {
	b, _ := os.ReadFile(r.logPath)
	return string(b)
}

// waitFor polls the serial log until it contains s.
func (r *vmRun) waitFor(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(r.log(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("%q not in serial log after %s:\n%s", s, timeout, r.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// wait waits for QEMU to exit and returns the parsed exit line.
func (r *vmRun) wait(t *testing.T, timeout time.Duration) guestconfig.Exit {
	t.Helper()
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("qemu: %v\nserial log:\n%s", err, r.log())
		}
	case <-time.After(timeout):
		t.Fatalf("VM did not power off within %s; serial log:\n%s", timeout, r.log())
	}
	var exits []guestconfig.Exit
	sc := bufio.NewScanner(strings.NewReader(r.log()))
	for sc.Scan() {
		if e, ok := guestconfig.ParseExit(sc.Text()); ok {
			exits = append(exits, e)
		}
	}
	if len(exits) != 1 {
		t.Fatalf("want exactly one exit line, got %d; serial log:\n%s", len(exits), r.log())
	}
	return exits[0]
}

// debugfsCat reads a file from an (unmounted) ext4 image.
func debugfsCat(t *testing.T, img, path string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+path, img).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", path, err)
	}
	return string(out)
}

// fsckClean checks the ext4 image was unmounted cleanly.
func fsckClean(t *testing.T, img string) {
	t.Helper()
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s", img, err, out)
	}
}
