package guestinit

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"hypeman/internal/guest/agent"
)

// StartProgram implements agent.ProgramStarter for a guest booted in
// template mode (guestconfig.Config.Template): it makes the restored guest
// the instance req describes, in this order: wall clock (the restored clock
// is the template's, from when it was saved), kernel RNG (every clone of a
// template starts from the same RNG state), hostname and /etc files,
// network (the template's NIC has no address; the clone's MAC differs from
// the saved one); then it hands the config to the init's main loop, which
// runs the program exactly as a cold boot does. Single use.
func (in *initProc) StartProgram(ctx context.Context, req agent.StartRequest) error {
	err := agent.ErrAlreadyStarted
	in.startOnce.Do(func() { err = in.applyStart(ctx, req) })
	return err
}

func (in *initProc) applyStart(ctx context.Context, req agent.StartRequest) error {
	cfg := req.Config
	if req.HostTimeUnixNano > 0 {
		ts := unix.NsecToTimespec(req.HostTimeUnixNano)
		if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
			return fmt.Errorf("start: set clock: %w", err)
		}
	}
	if err := (agent.KernelRNG{}).Reseed(req.Seed); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	etc := cfg
	etc.Network = nil // ConfigureNetwork below writes the network's files
	if err := in.mounts.writeEtc(&etc); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	in.net.mu.Lock()
	in.net.hostname = cfg.Hostname
	in.net.mu.Unlock()
	if cfg.Network != nil {
		t0 := time.Now()
		if err := in.net.ConfigureNetwork(ctx, *cfg.Network); err != nil {
			// As at boot: not fatal, the program runs and the host can
			// re-address the guest.
			in.log.Error("network", "err", err)
			in.con.Line("hypeman-init: network not configured: " + err.Error())
		} else {
			in.log.Info("network configured", "address", cfg.Network.Address, "took", time.Since(t0))
		}
	}
	c := cfg
	c.Template = false
	in.startCh <- &c
	return nil
}

// compile-time check: the init serves start requests.
var _ agent.ProgramStarter = (*initProc)(nil)
