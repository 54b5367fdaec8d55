package qemu

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"

	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/hypervisor"
	"hypeman/internal/hypervisor/qemu/qmp"
)

// File names the driver keeps in VMConfig.Dir (besides the hypervisor.*Name
// logs).
const (
	QMPSocketName = "qmp.sock"
	PidFileName   = "qemu.pid"
	ArgsFileName  = "qemu.args.json"
)

// LaunchSpec is everything the QEMU command line depends on.
type LaunchSpec struct {
	VM    hypervisor.VMConfig
	Accel hypervisor.Accelerator
	// TSCKHz is appended to the kernel command line as tsc_early_khz= unless
	// the command line already sets it. 0 appends nothing.
	TSCKHz int
}

// MachineOptions returns the -machine value. microvm (no PCI, no firmware
// detour, PVH direct boot) boots fastest under TCG; isa-serial gives the
// ttyS0 console; rtc keeps the guest's wall clock right. ACPI stays at its
// default (on): the guest discovers the virtio-mmio devices through it
// (Debian's kernel lacks CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES) and it carries
// the power button for system_powerdown. pit/pic stay default: turning them
// off measured no faster here and the PIT is the fallback timer.
func MachineOptions(accel hypervisor.Accelerator) string {
	return "microvm,accel=" + string(accel) + ",isa-serial=on,rtc=on"
}

// BuildArgs returns the QEMU argument list (without argv[0]) for spec.
//
// QEMU runs with VMConfig.Dir as its working directory and every path inside
// Dir is passed relative to it: unix socket paths are limited to 107 bytes
// and instance dirs can be long, and a command line without the dir in it
// can be replayed verbatim from another dir (restore from a snapshot).
// Paths outside Dir must be absolute.
func BuildArgs(spec LaunchSpec) ([]string, error) {
	vm := spec.VM
	if err := validate(spec); err != nil {
		return nil, err
	}
	cpu := "max"
	if spec.Accel == hypervisor.AccelKVM {
		cpu = "host"
	}
	args := []string{}
	if vm.ID != "" {
		args = append(args, "-name", "guest="+escapeOpt(vm.ID))
	}
	machine := MachineOptions(spec.Accel)
	if vm.MemoryFile != "" {
		machine += ",memory-backend=" + memBackendID
	}
	args = append(args,
		"-machine", machine,
		"-cpu", cpu,
		"-m", strconv.Itoa(vm.MemoryMiB)+"M",
	)
	if vm.MemoryFile != "" {
		// Guest RAM in the file, mapped shared (memfile.go).
		args = append(args, "-object", memoryBackendObject(vm.MemoryMiB, rel(vm.Dir, vm.MemoryFile), true))
	}
	args = append(args,
		"-smp", strconv.Itoa(vm.VCPUs),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-msg", "timestamp=on",
		"-kernel", rel(vm.Dir, vm.KernelPath),
	)
	if vm.InitrdPath != "" {
		args = append(args, "-initrd", rel(vm.Dir, vm.InitrdPath))
	}
	args = append(args, "-append", KernelCmdline(memoryCmdline(vm.Cmdline, vm.MemoryMiB, vm.BalloonMiB), spec.TSCKHz))

	args = append(args,
		"-chardev", "file,id="+serialChardev+",path="+hypervisor.SerialLogName+",append=on",
		"-serial", "chardev:"+serialChardev,
		"-chardev", "socket,id=qmp,path="+QMPSocketName+",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
	)

	for i, d := range vm.Disks {
		id := "disk" + strconv.Itoa(i)
		drive := "if=none,id=" + id + ",file=" + escapeOpt(driveFile(rel(vm.Dir, d.Path))) + ",format=raw"
		if d.ReadOnly {
			drive += ",readonly=on"
		} else if vm.DiskIOBps > 0 {
			drive += ",throttling.bps-total=" + strconv.FormatInt(vm.DiskIOBps, 10) + ",throttling.group=" + diskThrottleGroup
		}
		dev := "virtio-blk-device,drive=" + id
		if d.Serial != "" {
			dev += ",serial=" + escapeOpt(d.Serial)
		}
		args = append(args, "-drive", drive, "-device", dev)
	}

	if vm.AgentSocket != "" {
		args = append(args,
			"-device", "virtio-serial-device",
			"-chardev", "socket,id=agent,path="+escapeOpt(rel(vm.Dir, vm.AgentSocket))+",server=on,wait=off",
			"-device", "virtserialport,chardev=agent,name="+guestconfig.AgentPortName,
		)
	}

	if n := vm.Net; n != nil {
		netdev, dev := netArgs(n)
		args = append(args, "-netdev", netdev, "-device", dev)
	}
	if vm.BalloonMiB > 0 {
		args = append(args, "-device", balloonDevice)
	}
	return args, nil
}

// diskThrottleGroup is the QEMU throttle group every writable disk joins
// when VMConfig.DiskIOBps is set: drives in one group share one budget, so
// the limit is per VM, not per disk. QEMU's leaky bucket lets a burst of a
// tenth of a second's budget through (its default bps-total-max); over
// seconds the rate holds.
const diskThrottleGroup = "hm-io"

// balloonDevice is the memory balloon (virtio-mmio on microvm). microvm
// has no ACPI memory hotplug (QEMU 7.2 accepts pc-dimm and virtio-mem
// there but the guest never sees the memory: no DIMM in the ACPI tables,
// and virtio-mem's region is not mapped without the machine's hotplug
// handler), so "hotplug" memory is booted with the VM and held back by the
// balloon instead. deflate-on-oom stays off: the guest only grows when the
// host deflates the balloon, and its MemTotal shows what it may use.
const balloonDevice = "virtio-balloon-device"

// memoryCmdline adds the guest kernel options big and ballooned VMs need,
// unless the command line already chooses them:
//   - init_on_alloc=0 with a balloon. The Debian kernel zeroes every page
//     it allocates (INIT_ON_ALLOC_DEFAULT_ON), including the pages it hands
//     to the balloon, which QEMU discards right after: measured under TCG,
//     inflating a 3 GiB balloon at boot cost ~7 s of vCPU time with zeroing
//     and ~1.4 s without.
//   - swiotlb=noforce above 3 GiB of RAM. Once guest RAM crosses the 4 GiB
//     boundary Linux reserves (and touches) a 64 MiB bounce buffer for
//     DMA, but virtio-mmio devices without VIRTIO_F_ACCESS_PLATFORM (all of
//     ours) never use the DMA API: measured on a 4 GiB guest, 64 MiB more
//     MemTotal and ~70 MiB less VMM RSS without it.
func memoryCmdline(cmdline string, memoryMiB, balloonMiB int) string {
	add := func(opt string) {
		key, _, _ := strings.Cut(opt, "=")
		if !strings.Contains(cmdline, key+"=") {
			cmdline = strings.TrimSpace(cmdline + " " + opt)
		}
	}
	if balloonMiB > 0 {
		add("init_on_alloc=0")
	}
	if memoryMiB > 3<<10 {
		add("swiotlb=noforce")
	}
	return cmdline
}

// netDeviceModel is the -device model of the (only) NIC; its backend is
// always -netdev id=net0.
const netDeviceModel = "virtio-net-device"

// netArgs returns the -netdev and -device values for n.
func netArgs(n *hypervisor.NetConfig) (netdev, device string) {
	if n.TAP != "" {
		netdev = "tap,id=net0,ifname=" + escapeOpt(n.TAP) + ",script=no,downscript=no"
	} else {
		netdev = "user,id=net0"
		for _, f := range n.HostForwards {
			netdev += ",hostfwd=" + escapeOpt(f)
		}
	}
	device = netDeviceModel + ",netdev=net0"
	if n.MAC != "" {
		device += ",mac=" + n.MAC
	}
	return netdev, device
}

// KernelCmdline appends tsc_early_khz=N to cmdline unless it is already
// there or khz is 0.
func KernelCmdline(cmdline string, khz int) string {
	cmdline = strings.TrimSpace(cmdline)
	if khz <= 0 {
		return cmdline
	}
	for _, f := range strings.Fields(cmdline) {
		if strings.HasPrefix(f, "tsc_early_khz=") {
			return cmdline
		}
	}
	if cmdline != "" {
		cmdline += " "
	}
	return cmdline + "tsc_early_khz=" + strconv.Itoa(khz)
}

func validate(spec LaunchSpec) error {
	vm := spec.VM
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if spec.Accel != hypervisor.AccelTCG && spec.Accel != hypervisor.AccelKVM {
		bad("accelerator %q: want tcg or kvm", spec.Accel)
	}
	if !filepath.IsAbs(vm.Dir) {
		bad("dir %q: must be an absolute path", vm.Dir)
	}
	if vm.KernelPath == "" {
		bad("kernel path is required")
	}
	abs := func(what, p string) {
		if p != "" && !filepath.IsAbs(p) {
			bad("%s %q: must be an absolute path", what, p)
		}
	}
	abs("kernel", vm.KernelPath)
	abs("initrd", vm.InitrdPath)
	abs("agent socket", vm.AgentSocket)
	if vm.MemoryMiB < 16 {
		bad("memory %d MiB: want at least 16", vm.MemoryMiB)
	}
	if vm.BalloonMiB < 0 || (vm.BalloonMiB > 0 && vm.MemoryMiB-vm.BalloonMiB < 16) {
		bad("balloon %d MiB: must leave the guest at least 16 of its %d MiB", vm.BalloonMiB, vm.MemoryMiB)
	}
	abs("memory file", vm.MemoryFile)
	if vm.MemoryFile != "" && vm.BalloonMiB > 0 {
		// QEMU 7.2 punches ballooned pages out of a RAM file even when a
		// clone maps it privately: the template's file would lose them.
		bad("memory file and balloon cannot be combined (a balloon discards pages by punching holes in the memory file that clones share)")
	}
	if vm.DiskIOBps < 0 {
		bad("disk I/O limit %d bytes/s: must not be negative", vm.DiskIOBps)
	}
	if vm.VCPUs < 1 || vm.VCPUs > 255 {
		bad("vcpus %d: want 1..255", vm.VCPUs)
	}
	for i, d := range vm.Disks {
		if d.Path == "" {
			bad("disk %d: path is required", i)
		}
		abs(fmt.Sprintf("disk %d", i), d.Path)
		if len(d.Serial) > 20 { // virtio-blk serial is at most 20 bytes
			bad("disk %d: serial %q longer than 20 bytes", i, d.Serial)
		}
	}
	if vm.AgentSocket != "" && len(rel(vm.Dir, vm.AgentSocket)) > qmp.MaxUnixPath {
		bad("agent socket %q: path longer than %d bytes and not inside the instance dir", vm.AgentSocket, qmp.MaxUnixPath)
	}
	if n := vm.Net; n != nil {
		if (n.TAP != "") == n.User {
			bad("network: exactly one of TAP or User must be set")
		}
		if n.MAC != "" {
			if hw, err := net.ParseMAC(n.MAC); err != nil || len(hw) != 6 {
				bad("network: invalid MAC %q", n.MAC)
			}
		}
		if len(n.HostForwards) > 0 && !n.User {
			bad("network: host forwards need user-mode networking")
		}
	}
	if strings.ContainsRune(vm.Cmdline, '\n') {
		bad("kernel command line contains a newline")
	}
	return errors.Join(errs...)
}

// rel returns p relative to dir when p is inside dir, else p unchanged.
func rel(dir, p string) string {
	r, err := filepath.Rel(dir, p)
	if err != nil || r == ".." || strings.HasPrefix(r, "../") || filepath.IsAbs(r) {
		return p
	}
	return r
}

// driveFile keeps QEMU from reading "name:rest" as a block protocol prefix:
// a relative name without a slash gets "./" in front.
func driveFile(p string) string {
	if !strings.Contains(p, "/") {
		return "./" + p
	}
	return p
}

// escapeOpt escapes a value for QEMU's key=value,... option syntax, where a
// literal comma is written as two.
func escapeOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }
