package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"hypeman/internal/childproc"
	"hypeman/internal/hypervisor"
)

// kvmAPIVersion is the only KVM API version Linux has ever reported.
const kvmAPIVersion = 12

// ReasonKVMPVM is the AccelChoice reason when the kvm_pvm module is loaded.
const ReasonKVMPVM = "kvm_pvm detected: stock kernels hang under it, using TCG"

// HostProbe is what accelerator detection asks the host. Tests fake it.
type HostProbe interface {
	// KVMAPIVersion opens /dev/kvm read-write and returns the result of
	// the KVM_GET_API_VERSION ioctl. A missing device yields an error
	// satisfying errors.Is(err, os.ErrNotExist).
	KVMAPIVersion() (int, error)
	// ModuleLoaded reports whether a kernel module is loaded
	// (/sys/module/<name> exists).
	ModuleLoaded(name string) bool
}

// Host is the real HostProbe (and TSCSource), reading the running system.
type Host struct{}

// KVMAPIVersion implements HostProbe.
func (Host) KVMAPIVersion() (int, error) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	// KVM_GET_API_VERSION = _IO(KVMIO=0xAE, 0x00)
	v, err := unix.IoctlRetInt(int(f.Fd()), 0xAE00)
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_API_VERSION: %w", err)
	}
	return v, nil
}

// ModuleLoaded implements HostProbe.
func (Host) ModuleLoaded(name string) bool {
	_, err := os.Stat(filepath.Join("/sys/module", name))
	return err == nil
}

// ErrKVMUnusable is returned by DetectAccel when KVM is forced but unusable.
var ErrKVMUnusable = errors.New("kvm unusable")

// DetectAccel chooses the accelerator for mode. In auto mode KVM is chosen
// only when /dev/kvm opens, reports API version 12 and the host is not
// kvm_pvm (whose KVM makes stock guest kernels hang); otherwise TCG, with the
// reason. Forcing kvm fails with ErrKVMUnusable when /dev/kvm does not work.
func DetectAccel(mode hypervisor.Accelerator, probe HostProbe) (hypervisor.AccelChoice, error) {
	switch mode {
	case hypervisor.AccelTCG:
		return hypervisor.AccelChoice{Accel: hypervisor.AccelTCG, Reason: "tcg forced by configuration"}, nil
	case hypervisor.AccelKVM:
		if err := kvmWorks(probe); err != nil {
			return hypervisor.AccelChoice{}, fmt.Errorf("%w: %w", ErrKVMUnusable, err)
		}
		reason := "kvm forced by configuration"
		if probe.ModuleLoaded("kvm_pvm") {
			reason += " (warning: kvm_pvm is loaded; stock kernels may hang)"
		}
		return hypervisor.AccelChoice{Accel: hypervisor.AccelKVM, Reason: reason}, nil
	case hypervisor.AccelAuto, "":
		// kvm_pvm first: it is the reason KVM must not be used even when
		// /dev/kvm opens, and the most useful thing to tell an operator.
		if probe.ModuleLoaded("kvm_pvm") {
			return hypervisor.AccelChoice{Accel: hypervisor.AccelTCG, Reason: ReasonKVMPVM}, nil
		}
		if err := kvmWorks(probe); err != nil {
			return hypervisor.AccelChoice{Accel: hypervisor.AccelTCG, Reason: err.Error() + ", using TCG"}, nil
		}
		return hypervisor.AccelChoice{Accel: hypervisor.AccelKVM, Reason: "/dev/kvm works (API version 12)"}, nil
	default:
		return hypervisor.AccelChoice{}, fmt.Errorf("unknown accelerator %q (want auto, kvm or tcg)", mode)
	}
}

func kvmWorks(probe HostProbe) error {
	v, err := probe.KVMAPIVersion()
	switch {
	case errors.Is(err, os.ErrNotExist):
		return errors.New("/dev/kvm missing")
	case err != nil:
		return fmt.Errorf("/dev/kvm unusable: %w", err)
	case v != kvmAPIVersion:
		return fmt.Errorf("/dev/kvm reports API version %d, want %d", v, kvmAPIVersion)
	}
	return nil
}

// BootProbe boots kernel (no initrd) under accel and waits until the kernel
// reaches the point where it looks for a root filesystem, proving the
// accelerator runs a stock kernel through early boot. It is the optional
// "really works" check behind Config.KVMBootProbeKernel: on kvm_pvm hosts
// the kernel stalls before that point. It returns nil on success; the QEMU
// process is always gone when it returns.
//
// tscKHz (0: omit) is passed as tsc_early_khz: without it a microvm guest
// often hangs calibrating its TSC under TCG.
func BootProbe(ctx context.Context, binary, kernel string, accel hypervisor.Accelerator, tscKHz int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dir, err := os.MkdirTemp("", "hypeman-bootprobe-")
	if err != nil {
		return fmt.Errorf("boot probe: %w", err)
	}
	defer os.RemoveAll(dir)
	cpu := "max"
	if accel == hypervisor.AccelKVM {
		cpu = "host"
	}
	serial := filepath.Join(dir, "serial.log")
	// panic=-1 + -no-reboot: the panic at root mount makes QEMU exit at once.
	cmd := childproc.CommandContext(ctx, binary,
		"-machine", "microvm,accel="+string(accel)+",isa-serial=on,rtc=on",
		"-cpu", cpu, "-m", "256M", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", kernel,
		"-append", KernelCmdline("console=ttyS0 panic=-1 loglevel=4", tscKHz),
		"-chardev", "file,id=ser0,path="+escapeOpt(serial),
		"-serial", "chardev:ser0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	runErr := cmd.Run()
	out, _ := os.ReadFile(serial)
	if bytes.Contains(out, []byte("VFS: Unable to mount root")) || bytes.Contains(out, []byte("Run /init")) {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("boot probe (%s): kernel did not reach root mount within %v", accel, timeout)
	}
	return fmt.Errorf("boot probe (%s): qemu: %v: %s", accel, runErr, strings.TrimSpace(stderr.String()))
}
