// Package daemon assembles hypemand from its parts: image store, guest
// kernel + initrd, hypervisor driver, event bus and instance manager.
//
// Why a package instead of code in main: the integration tests run the very
// same assembly in-process (and the kill -9 tests run the real binary), so
// what is tested is what ships. Adapters between packages (image store →
// the manager's Images interface, guest agent → GuestAgent) live here, which
// keeps each package's interfaces small and declared at its consumer.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"hypeman/internal/config"
	"hypeman/internal/events"
	"hypeman/internal/guest/agent"
	"hypeman/internal/health"
	"hypeman/internal/hypervisor"
	"hypeman/internal/hypervisor/qemu"
	"hypeman/internal/images"
	"hypeman/internal/instances"
	"hypeman/internal/network"
	"hypeman/internal/network/ingress"
	"hypeman/internal/restart"
	"hypeman/internal/system"
)

// Daemon is a running hypemand core (everything but the HTTP servers).
type Daemon struct {
	Config     *config.Config
	Logger     *slog.Logger
	Images     *images.Store
	Hypervisor *qemu.Driver
	Kernel     *system.Kernel
	Initrd     string
	Events     *events.Bus
	Instances  *instances.Manager
	Network    *network.Manager // nil when network_mode is none
	Ingress    *ingress.Manager // nil when Network is nil
	Restart    *restart.Controller
	Health     *health.Controller
	StartedAt  time.Time

	cancel  context.CancelFunc
	ctlDone chan struct{}
}

// Option tunes New.
type Option func(*options)

type options struct {
	restartMetrics restart.Metrics
	healthMetrics  health.Metrics
}

// WithPolicyMetrics reports restart and health check metrics.
func WithPolicyMetrics(rm restart.Metrics, hm health.Metrics) Option {
	return func(o *options) { o.restartMetrics, o.healthMetrics = rm, hm }
}

// New builds and starts the core. It fails with actionable errors when the
// host lacks what guests need (kernel, init binary, QEMU).
func New(ctx context.Context, cfg *config.Config, logger *slog.Logger, opts ...Option) (*Daemon, error) {
	var o options
	for _, fn := range opts {
		fn(&o)
	}
	if logger == nil {
		logger = slog.Default()
	}
	p := cfg.Paths()
	for _, dir := range []string{p.Root, p.ImagesDir(), p.InstancesDir(), p.InitrdDir()} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("data dir: %w", err)
		}
	}
	d := &Daemon{Config: cfg, Logger: logger, StartedAt: time.Now()}
	var err error
	if cfg.KernelPath != "" {
		d.Kernel, err = system.KernelFromPaths(cfg.KernelPath, cfg.ModulesDir)
	} else {
		d.Kernel, err = system.LoadKernel(cfg.ResolvedKernelDir())
	}
	if err != nil {
		return nil, err
	}
	initBin := cfg.ResolvedInitBinary()
	if _, err := os.Stat(initBin); err != nil {
		return nil, fmt.Errorf("guest init binary %s: %w (build it with `make build`, or set init_binary)", initBin, err)
	}
	d.Initrd, err = system.BuildInitrd(ctx, system.InitrdSpec{InitBinary: initBin, Kernel: d.Kernel}, p.InitrdDir())
	if err != nil {
		return nil, fmt.Errorf("build initrd: %w", err)
	}
	var startProcess func(func() error) error
	if cfg.NetworkMode != "none" {
		d.Network, err = network.New(ctx, network.Config{
			Mode: network.Mode(cfg.NetworkMode), Bridge: cfg.NetworkBridge, Subnet: cfg.NetworkSubnet,
			DNS: cfg.NetworkDNS, NetNS: cfg.NetworkNetNS, StateDir: filepath.Join(p.Root, "network"),
		}, logger.With("component", "network"))
		if err != nil {
			return nil, fmt.Errorf("network: %w", err)
		}
		nc := d.Network.Capability()
		logger.Info("guest networking", "mode", nc.Mode, "reason", nc.Reason)
		if cfg.NetworkNetNS != "" {
			startProcess = d.Network.InNetNS
		}
	}
	d.Hypervisor, err = qemu.New(ctx, qemu.Config{
		Accel:        hypervisor.Accelerator(cfg.Accelerator),
		TSCKHz:       cfg.TSCKHz,
		StartProcess: startProcess,
		Logger:       logger.With("component", "qemu"),
	})
	if err != nil {
		return nil, fmt.Errorf("hypervisor: %w", err)
	}
	ac := d.Hypervisor.Accel()
	logger.Info("accelerator selected", "accelerator", ac.Accel, "reason", ac.Reason)

	d.Images, err = images.New(images.Config{
		Dir:        p.ImagesDir(),
		Insecure:   cfg.InsecureRegistries,
		DiskFormat: images.DiskFormat(cfg.DiskFormat),
	}, logger.With("component", "images"))
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	serialMax, err := instances.ParseSize(cfg.SerialLogMaxSize)
	if err != nil {
		d.Images.Close()
		return nil, fmt.Errorf("serial_log_max_size: %w", err)
	}
	d.Events = events.New(events.Options{})
	var netDep instances.Network
	if d.Network != nil && d.Network.Mode() != network.ModeNone {
		netDep = d.Network
	}
	d.Instances, err = instances.New(ctx, instances.Config{
		Network:    netDep,
		Paths:      p,
		Hypervisor: d.Hypervisor,
		Images:     ImageResolver{Store: d.Images},
		Boot: instances.Boot{
			KernelPath: d.Kernel.BootImage(),
			InitrdPath: d.Initrd,
		},
		Agent:              AgentDialer{},
		Events:             d.Events,
		Logger:             logger.With("component", "instances"),
		GuestStopTimeout:   time.Duration(cfg.GuestStopTimeout),
		DefaultSize:        cfg.DefaultSize,
		DefaultVCPUs:       cfg.DefaultVCPUs,
		DefaultOverlaySize: cfg.DefaultOverlaySize,
		StepHook:           testPauseHook(logger),
		CompressSnapshots:  cfg.CompressSnapshots,
		SerialLogMaxBytes:  serialMax,
		SerialLogFiles:     cfg.SerialLogFiles,
		// Running means the program started AND the guest agent serves
		// (exec, cp, graceful stop work), unless skip_guest_agent.
		RequireAgent: true,
	})
	if err != nil {
		d.Images.Close()
		return nil, fmt.Errorf("instance manager: %w", err)
	}
	if err := d.startControllers(o); err != nil {
		d.Close()
		return nil, err
	}
	if netDep != nil {
		if pruned, err := d.Network.Prune(ctx, d.Instances.Exists); err != nil {
			logger.Warn("prune network leases", "err", err)
		} else if len(pruned) > 0 {
			logger.Info("pruned network leases of instances that are gone", "instances", pruned)
		}
		d.Ingress, err = ingress.New(ctx, ingress.Config{
			StateDir: filepath.Join(p.Root, "ingress"), ListenAddress: cfg.IngressListen,
			DialContext: d.Network.DialContext,
		}, ingressResolver{d.Instances}, logger.With("component", "ingress"))
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("ingress: %w", err)
		}
	}
	return d, nil
}

// ingressResolver maps an ingress target to the guest's address.
type ingressResolver struct{ m *instances.Manager }

func (r ingressResolver) GuestAddr(ctx context.Context, instance string, port int) (string, error) {
	ip, err := r.m.GuestIP(ctx, instance)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(ip, strconv.Itoa(port)), nil
}

// Close stops the core. Running VMs keep running; the next daemon re-adopts
// them.
func (d *Daemon) Close() error {
	var errs []error
	if d.cancel != nil {
		d.cancel()
		<-d.ctlDone
	}
	if d.Ingress != nil {
		errs = append(errs, d.Ingress.Close())
	}
	if d.Instances != nil {
		errs = append(errs, d.Instances.Close())
	}
	if d.Images != nil {
		errs = append(errs, d.Images.Close())
	}
	if d.Events != nil {
		d.Events.Close()
	}
	if d.Network != nil {
		errs = append(errs, d.Network.Close())
	}
	return errors.Join(errs...)
}

// ImageResolver adapts the image store to instances.Images: it returns a
// ready image, pulling it first when the store lacks it (auto-pull on create).
type ImageResolver struct{ Store *images.Store }

// Resolve implements instances.Images.
func (r ImageResolver) Resolve(ctx context.Context, ref string) (instances.ImageInfo, error) {
	img, err := r.Store.Get(ctx, ref)
	if err != nil || img.Status != images.StatusReady {
		img, err = r.Store.Pull(ctx, ref)
	}
	if err != nil {
		return instances.ImageInfo{}, err
	}
	if img.Status != images.StatusReady {
		return instances.ImageInfo{}, fmt.Errorf("%w: %s is %s: %s", instances.ErrImageNotReady, ref, img.Status, img.Error)
	}
	return instances.ImageInfo{
		Name: img.Name, Digest: img.Digest, DiskPath: img.DiskPath, FSType: string(img.DiskFormat),
		Entrypoint: img.Config.Entrypoint, Cmd: img.Config.Cmd, Env: img.Config.Env,
		WorkingDir: img.Config.WorkingDir, User: img.Config.User,
	}, nil
}

// AgentDialer adapts the guest agent client to instances.GuestAgent.
type AgentDialer struct{}

// Dial implements instances.GuestAgent.
func (AgentDialer) Dial(ctx context.Context, socketPath string) (instances.AgentConn, error) {
	return agent.Dial(ctx, socketPath)
}

// testPauseHook implements HYPEMAN_TEST_PAUSE_AT=<step>: the daemon blocks
// forever at that step of a standby/restore so a crash test can kill -9 it
// there. Unset (always, outside tests) it is nil and costs nothing.
func testPauseHook(logger *slog.Logger) func(string) {
	at := os.Getenv("HYPEMAN_TEST_PAUSE_AT")
	if at == "" {
		return nil
	}
	return func(step string) {
		if step == at {
			logger.Warn("test hook reached: " + step + " (blocking until killed)")
			select {}
		}
	}
}

// startControllers runs the restart and health controllers: they subscribe
// to the lifecycle bus and drive the manager's start/stop paths.
func (d *Daemon) startControllers(o options) error {
	var err error
	d.Restart, err = restart.New(restart.Config{
		Instances: d.Instances, Events: d.Events, Metrics: o.restartMetrics,
		Logger: d.Logger.With("component", "restart"),
	})
	if err != nil {
		return fmt.Errorf("restart controller: %w", err)
	}
	d.Health, err = health.New(health.Config{
		Instances: d.Instances, Prober: &prober{m: d.Instances, net: d.Network}, Events: d.Events,
		Restarter: d.Restart, Metrics: o.healthMetrics, Logger: d.Logger.With("component", "health"),
	})
	if err != nil {
		return fmt.Errorf("health controller: %w", err)
	}
	d.Instances.SetRestartPending(d.Restart.RestartPending)
	d.Instances.SetPolicyChangedHook(func(id string) {
		d.Restart.Refresh(id)
		d.Health.Refresh(id)
	})
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel, d.ctlDone = cancel, make(chan struct{})
	var wg sync.WaitGroup
	for _, run := range []func(context.Context) error{d.Restart.Run, d.Health.Run} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(ctx); err != nil && ctx.Err() == nil {
				d.Logger.Error("controller stopped", "err", err)
			}
		}()
	}
	go func() { wg.Wait(); close(d.ctlDone) }()
	return nil
}

// prober runs health checks against guests: HTTP/TCP to the guest's IP
// (dialed in the network namespace that holds it), exec through the agent.
type prober struct {
	m   *instances.Manager
	net *network.Manager
}

func (p *prober) dial(ctx context.Context, id string, port int) (net.Conn, error) {
	ip, err := p.m.GuestIP(ctx, id)
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort(ip, strconv.Itoa(port))
	if p.net != nil {
		return p.net.DialContext(ctx, "tcp", addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

func (p *prober) HTTP(ctx context.Context, id string, port int, path string) (int, error) {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return p.dial(ctx, id, port)
	}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://guest"+path, nil)
	if err != nil {
		return 0, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func (p *prober) TCP(ctx context.Context, id string, port int) error {
	c, err := p.dial(ctx, id, port)
	if err != nil {
		return err
	}
	return c.Close()
}

func (p *prober) Exec(ctx context.Context, id string, command []string) (int, error) {
	res, err := p.m.Exec(ctx, id, agent.ExecRequest{Argv: command}, agent.ExecIO{})
	if err != nil {
		return 0, err
	}
	return res.ExitCode, nil
}
