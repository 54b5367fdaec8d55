// Package guestinit is the guest's PID 1: it turns the disks the host
// attached into the instance's root filesystem, runs the image's program in
// it, supervises it (reaping, graceful stop), reports how it ended on the
// serial console and powers the VM off.
//
// Design:
//   - The init never leaves the initramfs. The instance root (an overlayfs of
//     the read-only image disk and the writable overlay disk) is only a chroot
//     target for the program and for agent execs. Staying outside lets the init
//     unmount the overlay disk cleanly at the end (switch_root would leave it
//     running from the very filesystem it must unmount) and lets the agent exec
//     into the same root at any time with a plain chroot.
//   - Every failure ends in a HYPEMAN-EXIT line and a power-off, never a hang
//     or a kernel panic: the host learns why from the serial log.
//   - The exit line is printed after the writable disk is unmounted, so a host
//     that sees it may kill QEMU without risking the disk.
//   - The network (guestconfig.Network) is configured before the program
//     starts, concurrently with mounting the root. A network failure is
//     printed on the console but is not fatal (see guestNetwork.boot); the
//     agent can re-address the guest later (forks).
//   - Template mode (guestconfig.Config.Template, warm create): the init
//     stops at "ready to run a program" (root mounted, agent serving) and
//     waits for the agent's start op, which brings the instance's own
//     config; the host saves the guest while it waits and restores clones
//     of it (template.go).
//   - Diagnostics go to the kernel log (/dev/kmsg, level info): the serial
//     console is the program's log and only carries the program's output and
//     the marker lines.
package guestinit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"hypeman/internal/guest/agent"
	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/guest/guestproc"
)

// Timeouts of the init's own steps.
const (
	diskWaitTimeout    = 10 * time.Second
	defaultStopTimeout = 10 * time.Second
	teardownTimeout    = 10 * time.Second
	// After the program exits, output still buffered in its pipe is copied
	// for at most this long once every process has been killed.
	drainTimeout = time.Second
)

// Main is the body of the init binary. It never returns when it runs as
// PID 1 (the VM powers off); anywhere else it refuses to run, because its
// last act is reboot(2).
func Main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "hypeman-init: refusing to run: this is the guest init and must be PID 1 inside a VM")
		os.Exit(2)
	}
	in := &initProc{
		con:    NewConsole(os.Stdout),
		log:    slog.New(slog.DiscardHandler),
		reaper: guestproc.NewReaper(),
		stop:   make(chan struct{}),
	}
	exit := in.run(context.Background())
	in.finish(exit)
}

type initProc struct {
	con      *Console
	log      *slog.Logger
	reaper   *guestproc.Reaper
	mounts   mounter
	stop     chan struct{} // closed on a graceful stop request
	stopOnce sync.Once
	cancel   context.CancelFunc // stops the agent and the reaper loop
	// agentDone is closed when the agent has stopped (nil: never started).
	agentDone chan struct{}
	net       *guestNetwork
	// startCh (template mode only) receives the instance config of the
	// agent's start op; startOnce makes it single use.
	startCh   chan *guestconfig.Config
	startOnce sync.Once
}

// requestStop asks for a graceful stop (agent "shutdown", SIGTERM, SIGINT or
// SIGPWR to PID 1). Safe to call many times.
func (in *initProc) requestStop() {
	in.stopOnce.Do(func() {
		in.log.Info("graceful stop requested")
		close(in.stop)
	})
}

func initFailure(format string, args ...any) guestconfig.Exit {
	return guestconfig.Exit{Code: ExitCodeInitFailure, Message: "init: " + fmt.Sprintf(format, args...)}
}

// run brings the instance up and runs the program; it returns how the
// program (or the init) ended.
func (in *initProc) run(ctx context.Context) guestconfig.Exit {
	ctx, in.cancel = context.WithCancel(ctx)
	earlyErr := in.mounts.mountEarly()
	if con, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
		rawOutput(con)
		in.con = NewConsole(con)
	}
	if earlyErr != nil {
		return initFailure("%v", earlyErr)
	}
	if kmsg, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		in.log = slog.New(slog.NewTextHandler(kmsgWriter{w: kmsg}, &slog.HandlerOptions{
			ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
				if a.Key == slog.TimeKey {
					return slog.Attr{} // the kernel log has timestamps
				}
				return a
			},
		}))
	}
	in.reaper.OnOrphan = func(pid int, ws syscall.WaitStatus) {
		in.log.Debug("reaped orphan", "pid", pid, "status", uint32(ws))
	}
	go in.reaper.Run(ctx)

	// Ctrl-Alt-Del becomes SIGINT to PID 1 instead of an immediate reboot.
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGPWR)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case s := <-sigs:
				in.log.Info("signal to init", "signal", s.String())
				in.requestStop()
			}
		}
	}()
	// Docker's default; programs inherit it.
	_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: 1 << 20, Max: 1 << 20})

	if err := LoadModuleList(ModulesListPath); err != nil {
		return initFailure("%v", err)
	}
	in.log.Info("modules loaded")
	watchPowerButtons(ctx, FindPowerButtons("/sys/class/input", "/dev/input"), func() {
		in.log.Info("power button pressed")
		in.requestStop()
	})
	disks, err := WaitForDisks(ctx, "/sys/block", []string{
		guestconfig.SerialConfig, guestconfig.SerialRoot, guestconfig.SerialOverlay,
	}, diskWaitTimeout)
	if err != nil {
		return initFailure("%v", err)
	}
	in.log.Info("disks found", "disks", disks)
	cfg, err := readConfig("/dev/" + disks[guestconfig.SerialConfig])
	if err != nil {
		return initFailure("%v", err)
	}
	in.log.Info("config", "argv", cfg.Argv(), "rootfs", cfg.RootFS, "volumes", len(cfg.Volumes), "template", cfg.Template)
	if cfg.Template {
		// A template has no network or volumes of its own: the
		// instance restored from it brings them (start op).
		cfg.Network, cfg.Volumes = nil, nil
		if cfg.SkipGuestAgent {
			return initFailure("a template needs the guest agent (it receives its program through it)")
		}
		in.startCh = make(chan *guestconfig.Config, 1)
	}
	if want := volumeSerials(cfg.Volumes); len(want) > 0 {
		// Probed together with the instance's own disks: by now they
		// are normally present.
		vdisks, err := WaitForDisks(ctx, "/sys/block", want, diskWaitTimeout)
		if err != nil {
			return initFailure("volumes: %v", err)
		}
		disks = vdisks
	}
	// The network is configured while the root is mounted (both are slow
	// under TCG and independent) and is ready before the program starts.
	in.net = &guestNetwork{log: in.log.With("component", "network"), con: in.con, mounts: &in.mounts, hostname: cfg.Hostname}
	netReady := make(chan struct{})
	go func() {
		defer close(netReady)
		in.net.boot(ctx, cfg.Network)
	}()
	defer func() { <-netReady }() // a failed mount must not race its console line
	if err := in.mounts.mountRoot("/dev/"+disks[guestconfig.SerialRoot], "/dev/"+disks[guestconfig.SerialOverlay], cfg.RootFS); err != nil {
		return initFailure("%v", err)
	}
	if err := in.mounts.prepareRoot(); err != nil {
		return initFailure("%v", err)
	}
	if err := in.mounts.writeEtc(cfg); err != nil {
		return initFailure("%v", err)
	}
	if err := in.mounts.mountVolumes(disks, cfg.Volumes); err != nil {
		return initFailure("%v", err)
	}
	<-netReady
	in.log.Info("root ready")
	if cfg.Template {
		// Ready means ready to run: the balloon is settled before the
		// agent announces itself and the host saves the template.
		in.waitMemory(ctx, cfg)
		in.startAgent(ctx, cfg)
		select {
		case started := <-in.startCh:
			return in.runProgram(started)
		case <-in.stop:
			return guestconfig.Exit{Code: 0, Message: "template stopped before it was given a program"}
		}
	}
	if !cfg.SkipGuestAgent {
		in.startAgent(ctx, cfg)
	}
	in.waitMemory(ctx, cfg)
	return in.runProgram(cfg)
}

// waitMemory waits, bounded, for the balloon to hold the guest at
// cfg.MemoryTarget (when set).
func (in *initProc) waitMemory(ctx context.Context, cfg *guestconfig.Config) {
	if cfg.MemoryTarget <= 0 {
		return
	}
	total, err := waitForMemTotal(ctx, "/proc/meminfo", cfg.MemoryTarget, memoryWaitTimeout, 20*time.Millisecond)
	if err != nil {
		in.log.Error("memory balloon did not reach its target, starting the program anyway", "err", err)
	} else {
		in.log.Info("memory at target", "mem_total_mib", total>>20)
	}
}

// volumeSerials lists the disks the volumes need.
func volumeSerials(vols []guestconfig.VolumeMount) []string {
	var out []string
	for _, v := range vols {
		out = append(out, v.Serial)
		if v.Overlay {
			out = append(out, v.OverlaySerial)
		}
	}
	return out
}

// readConfig reads the config disk up to the first NUL byte, in chunks: the
// JSON is small and reading the whole padded megabyte costs ~80 ms under TCG.
func readConfig(dev string) (*guestconfig.Config, error) {
	f, err := os.Open(dev)
	if err != nil {
		return nil, fmt.Errorf("config disk: %w", err)
	}
	defer f.Close()
	var buf []byte
	chunk := make([]byte, 64<<10)
	for len(buf) < guestconfig.ConfigDiskSize {
		n, err := f.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if bytes.IndexByte(chunk[:n], 0) >= 0 || errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("config disk %s: %w", dev, err)
		}
	}
	cfg, err := guestconfig.Decode(buf)
	if err != nil {
		return nil, fmt.Errorf("config disk %s: %w", dev, err)
	}
	return cfg, nil
}

// agentStartTimeout bounds how long the program waits for the agent's first
// port open; waiting keeps the ready marker from landing inside the
// program's output.
const agentStartTimeout = 2 * time.Second

// templatePortRetry is how often a template-mode guest reopens its agent
// port while no host is connected.
const templatePortRetry = 5 * time.Millisecond

// agentStopTimeout bounds the wait for the agent's handlers at teardown (a
// copy into the root must end before the root is unmounted).
const agentStopTimeout = 3 * time.Second

// startAgent serves the agent in the background. It returns when the agent
// is ready, has failed, or agentStartTimeout passed.
func (in *initProc) startAgent(ctx context.Context, cfg *guestconfig.Config) {
	srv := &agent.Server{
		Root:        RootDir,
		BaseEnv:     cfg.Env,
		DefaultUser: cfg.User,
		DefaultCwd:  cfg.WorkingDir,
		Hostname:    cfg.Hostname,
		Starter:     in.reaper,
		Shutdown:    in.requestStop,
		Network:     in.net,
		Logger:      in.log.With("component", "agent"),
	}
	if in.startCh != nil {
		srv.Program = in
	}
	ready := make(chan struct{})
	var once sync.Once
	markReady := func() { once.Do(func() { close(ready) }) }
	in.agentDone = make(chan struct{})
	go func() {
		defer close(in.agentDone)
		defer markReady()
		pc := agent.PortConfig{
			Name: guestconfig.AgentPortName,
			Ready: func() {
				in.con.Line(guestconfig.MarkerAgentReady)
				markReady()
			},
		}
		if in.startCh != nil {
			// A template is saved with no host connected: its clones
			// find the host within ms of their restore, so they retry
			// the port often (the default 200 ms would be most of a
			// warm start).
			pc.Retry = templatePortRetry
		}
		err := srv.ServePort(ctx, pc)
		if err != nil && ctx.Err() == nil {
			in.log.Error("agent stopped", "err", err)
			in.con.Line("hypeman-init: guest agent unavailable: " + err.Error())
		}
	}()
	select {
	case <-ready:
	case <-time.After(agentStartTimeout):
		in.log.Error("agent not ready, starting the program anyway")
	}
}

// runProgram starts the program and supervises it until it exits.
func (in *initProc) runProgram(cfg *guestconfig.Config) guestconfig.Exit {
	argv := cfg.Argv()
	if len(argv) == 0 {
		return initFailure("no command: the image has no entrypoint or cmd and none was given")
	}
	user, err := guestproc.ResolveUser(RootDir, cfg.User)
	if err != nil {
		return initFailure("%v", err)
	}
	cwd := cfg.WorkingDir
	if cwd == "" {
		cwd = "/"
	}
	// Docker creates a missing working directory.
	if err := ensureDir(RootDir, cwd, 0o755); err != nil {
		return initFailure("working directory: %v", err)
	}
	env := guestproc.BuildEnv(guestproc.EnvDefaults{Home: user.Home, Hostname: cfg.Hostname}, cfg.Env)
	cmd, err := guestproc.Command(guestproc.Spec{
		Root: RootDir, Argv: argv, Env: env, Cwd: cwd, User: user, Setsid: true,
	})
	if err != nil {
		return commandFailure(err)
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return initFailure("%v", err)
	}
	defer devnull.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return initFailure("%v", err)
	}
	defer pr.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, pw, pw

	oomBefore := readOOMKills()
	in.con.Line(guestconfig.MarkerProgramStart)
	wait, err := in.reaper.Start(cmd)
	pw.Close()
	if err != nil {
		return commandFailure(guestproc.StartError(argv[0], err))
	}
	in.log.Info("program started", "pid", cmd.Process.Pid, "path", cmd.Path)
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = io.Copy(in.con, pr)
	}()
	exited := make(chan syscall.WaitStatus, 1)
	go func() {
		ws, _ := wait()
		exited <- ws
	}()

	var ws syscall.WaitStatus
	select {
	case ws = <-exited:
	case <-in.stop:
		timeout := defaultStopTimeout
		if cfg.StopTimeoutSeconds > 0 {
			timeout = time.Duration(cfg.StopTimeoutSeconds) * time.Second
		}
		in.log.Info("forwarding SIGTERM", "pid", cmd.Process.Pid, "timeout", timeout)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case ws = <-exited:
		case <-time.After(timeout):
			in.log.Info("stop timeout, killing everything")
			_ = syscall.Kill(-1, syscall.SIGKILL)
			ws = <-exited
		}
	}
	oomKills := readOOMKills() - oomBefore
	in.killAll()
	_ = pr.SetReadDeadline(time.Now().Add(drainTimeout))
	<-copied
	return ExitFromStatus(ws, oomKills)
}

func commandFailure(err error) guestconfig.Exit {
	var ce *guestproc.CommandError
	if errors.As(err, &ce) {
		return guestconfig.Exit{Code: ce.ExitCode(), Message: ce.Error()}
	}
	return initFailure("start program: %v", err)
}

// killAll SIGKILLs every process but the init and reaps them.
func (in *initProc) killAll() {
	_ = syscall.Kill(-1, syscall.SIGKILL)
	if err := in.reaper.WaitAll(3 * time.Second); err != nil {
		in.log.Error("kill all", "err", err)
	}
}

// rawOutput turns off output processing on the console, so the serial log
// holds exactly the bytes the program wrote ("\n", not "\r\n"), as a
// container log would.
func rawOutput(f *os.File) {
	fd := int(f.Fd())
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return
	}
	t.Oflag &^= unix.OPOST
	_ = unix.IoctlSetTermios(fd, unix.TCSETS, t)
}

func readOOMKills() int64 {
	f, err := os.Open("/proc/vmstat")
	if err != nil {
		return 0
	}
	defer f.Close()
	n, _ := ParseOOMKills(f)
	return n
}

// finish tears down (bounded in time), prints the exit line and powers off.
func (in *initProc) finish(exit guestconfig.Exit) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		in.killAll()
		in.cancel()
		if in.agentDone != nil {
			select {
			case <-in.agentDone:
			case <-time.After(agentStopTimeout):
				in.log.Error("agent did not stop in time")
			}
		}
		for _, err := range in.mounts.unmountAll() {
			in.log.Error("teardown", "err", err)
			in.con.Line("hypeman-init: " + err.Error())
		}
	}()
	select {
	case <-done:
	case <-time.After(teardownTimeout):
		in.con.Line("hypeman-init: teardown timed out")
	}
	unix.Sync()
	in.con.Line(guestconfig.FormatExit(exit))
	powerOff()
}
