// Package childproc starts the daemon's short-lived helper processes
// (mkfs.erofs, mkfs.ext4, cp, xz, nft, dmesg, QEMU probes) so that they die
// with the daemon.
//
// Why: a daemon killed with SIGKILL cannot clean up. Its helpers would keep
// running (a mkfs over a half-staged tree, a cp of a snapshot), holding
// files and CPU and racing the next daemon's cleanup of the same temporary
// dirs. The kernel's parent-death signal (PR_SET_PDEATHSIG) kills a helper
// the moment its parent dies; Go's fork path closes the race where the
// parent dies before the child has set it up.
//
// QEMU is deliberately NOT started through here: a VM must outlive the
// daemon (it runs in its own process group and is re-adopted).
//
// The signal fires when the thread that forked the child exits. Go keeps
// its threads for the life of the process except when a goroutine locked
// to one ends without unlocking it (as network-namespace helpers do), so a
// helper must be waited for by the goroutine that started it (Run, Output,
// CombinedOutput, or Start and Wait together), which every caller does.
package childproc

import (
	"context"
	"os/exec"
	"syscall"
)

// CommandContext is exec.CommandContext for a helper that must not outlive
// the daemon: it is killed (SIGKILL) when the daemon dies.
func CommandContext(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}
