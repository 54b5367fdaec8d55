package guestinit

import (
	"os"

	"golang.org/x/sys/unix"
)

// powerOff ends the VM. POWER_OFF makes QEMU exit on microvm (ACPI GED
// sleep control) and pc; should it ever return, RESTART makes a QEMU started
// with -no-reboot exit too, and as a last resort PID 1 exiting panics the
// kernel, which with panic=-1 reboots (and so exits) at once.
func powerOff() {
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	os.Exit(1)
}
