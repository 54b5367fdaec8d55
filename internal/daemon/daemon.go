// Package daemon assembles hypemand from its parts: image store, guest
// kernel + initrd, hypervisor driver, event bus, instance manager, the
// restart and health controllers, and the Prometheus metrics they all feed.
//
// Why a package instead of code in main: the integration tests run the very
// same assembly in-process (and the kill -9 tests run the real binary), so
// what is tested is what ships. Adapters between packages (image store →
// the manager's Images interface, guest agent → GuestAgent) live here, which
// keeps each package's interfaces small and declared at its consumer.
package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"hypeman/internal/autostandby"
	"hypeman/internal/config"
	"hypeman/internal/events"
	"hypeman/internal/events/eventsprom"
	"hypeman/internal/expiry"
	"hypeman/internal/guest/agent"
	"hypeman/internal/health"
	"hypeman/internal/hypervisor"
	"hypeman/internal/hypervisor/qemu"
	"hypeman/internal/images"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/metrics"
	"hypeman/internal/network"
	"hypeman/internal/network/ingress"
	"hypeman/internal/phases"
	"hypeman/internal/pushes"
	"hypeman/internal/resources"
	"hypeman/internal/restart"
	"hypeman/internal/schedules"
	"hypeman/internal/system"
	"hypeman/internal/volumes"
	"hypeman/internal/warm"
)

// Daemon is a running hypemand core (everything but the HTTP servers).
type Daemon struct {
	Config *config.Config
	Logger *slog.Logger
	Images *images.Store
	// Pushes exports images to other registries (POST /pushes).
	Pushes     *pushes.Manager
	Hypervisor *qemu.Driver
	Kernel     *system.Kernel
	Initrd     string
	Events     *events.Bus
	Instances  *instances.Manager
	Network    *network.Manager // nil when network_mode is none
	Ingress    *ingress.Manager // nil when Network is nil
	Volumes    *volumes.Store
	// Resources is the allocation ledger (admission); Reclaimer runs
	// guest memory reclaims.
	Resources *resources.Ledger
	Reclaimer *resources.Reclaimer
	Restart   *restart.Controller
	Health    *health.Controller
	// AutoStandby is nil without bridge networking (autostandby.go).
	AutoStandby *autostandby.Controller
	// Expiry deletes instances whose ttl / expires_at passed; Schedules
	// takes scheduled snapshots.
	Expiry    *expiry.Controller
	Schedules *schedules.Controller
	// Phases accounts time per lifecycle phase (a bus consumer).
	Phases *phases.Tracker
	// Metrics is the Prometheus registry every part reports into (operation
	// durations, time to Running, events, transitions, pulls, restarts,
	// health checks); hypemand serves it on metrics_listen.
	Metrics   *metrics.Metrics
	StartedAt time.Time

	phaseFollower *phases.Follower

	cancel  context.CancelFunc
	ctlDone chan struct{}
}

// New builds and starts the core. It fails with actionable errors when the
// host lacks what guests need (kernel, init binary, QEMU).
func New(ctx context.Context, cfg *config.Config, logger *slog.Logger) (*Daemon, error) {
	if logger == nil {
		logger = slog.Default()
	}
	p := cfg.Paths()
	for _, dir := range []string{p.Root, p.ImagesDir(), p.InstancesDir(), p.InitrdDir()} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("data dir: %w", err)
		}
	}
	d := &Daemon{Config: cfg, Logger: logger, StartedAt: time.Now(), Metrics: metrics.New()}
	busMetrics, err := eventsprom.New(d.Metrics.Registry)
	if err != nil {
		return nil, err
	}
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
		Dir:                  p.ImagesDir(),
		Insecure:             cfg.InsecureRegistries,
		DiskFormat:           images.DiskFormat(cfg.DiskFormat),
		AllowRegistries:      cfg.RegistriesAllow,
		DenyPublicRegistries: !cfg.RegistriesAllowPublic,
		SelfAddr:             cfg.Listen,
		LocalRegistry:        ownRegistry(cfg.Listen),
		Limits: images.Limits{
			MaxUnpackedBytes: int64(cfg.ImageMaxUnpackedSize),
			MaxConfigBytes:   int64(cfg.ImageMaxConfigSize),
			MaxManifestBytes: int64(cfg.ImageMaxManifestSize),
			MaxLayers:        cfg.ImageMaxLayers,
		},
		DisableOCICache: !cfg.ImageOCICache,
	}, logger.With("component", "images"))
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	d.Pushes, err = pushes.New(pushes.Config{Dir: p.PushesDir(), Images: d.Images, Concurrency: cfg.PushConcurrency,
		Logger: logger.With("component", "pushes")})
	if err != nil {
		d.Images.Close()
		return nil, fmt.Errorf("pushes: %w", err)
	}
	d.Events = events.New(events.Options{Metrics: busMetrics})
	if d.Phases, err = phases.Open(filepath.Join(p.Root, "phases.json"), nil, logger.With("component", "phases")); err != nil {
		d.Pushes.Close()
		d.Images.Close()
		return nil, err
	}
	// Subscribe before the manager starts publishing (re-adoption at load).
	d.phaseFollower = d.Phases.Subscribe(d.Events)
	d.Volumes, err = volumes.New(volumes.Config{
		Dir: p.VolumesDir(), MaxSizeGB: cfg.VolumeMaxSizeGB, Log: logger.With("component", "volumes"),
	})
	if err != nil {
		d.Images.Close()
		return nil, fmt.Errorf("volume store: %w", err)
	}
	var netDep instances.Network
	if d.Network != nil && d.Network.Mode() != network.ModeNone {
		netDep = d.Network
	}
	snapComp, err := cfg.ResolvedSnapshotCompression()
	if err != nil {
		return nil, err
	}
	if d.Resources, err = newLedger(cfg, logger); err != nil {
		d.Images.Close()
		return nil, err
	}
	d.Instances, err = instances.New(ctx, instances.Config{
		Admission:  d.Resources,
		Network:    netDep,
		Paths:      p,
		Hypervisor: d.Hypervisor,
		Images:     ImageResolver{Store: d.Images},
		Volumes:    volumeStore{d.Volumes},
		Boot: instances.Boot{
			KernelPath: d.Kernel.BootImage(),
			InitrdPath: d.Initrd,
		},
		Agent:               AgentDialer{},
		Events:              d.Events,
		Metrics:             d.Metrics,
		Logger:              logger.With("component", "instances"),
		GuestStopTimeout:    time.Duration(cfg.GuestStopTimeout),
		DefaultSize:         cfg.DefaultSize,
		DefaultVCPUs:        cfg.DefaultVCPUs,
		DefaultOverlaySize:  cfg.DefaultOverlaySize,
		StepHook:            testPauseHook(logger),
		SnapshotCompression: snapComp,
		SerialLogMaxBytes:   int64(cfg.SerialLogMaxSize),
		SerialLogFiles:      cfg.SerialLogFiles,
		// Running means the program started AND the guest agent serves
		// (exec, cp, graceful stop work), unless skip_guest_agent.
		RequireAgent: true,
		Warm:         warmConfig(cfg),
	})
	if err != nil {
		d.Pushes.Close()
		d.Images.Close()
		return nil, fmt.Errorf("instance manager: %w", err)
	}
	if err := reconcileVolumes(ctx, d.Volumes, d.Instances.VolumeAttachments()); err != nil {
		logger.Warn("reconcile volume attachments", "err", err)
	}
	if d.Reclaimer, err = resources.NewReclaimer(resources.ReclaimerConfig{Guests: d.Instances,
		Logger: logger.With("component", "resources")}); err != nil {
		d.Instances.Close()
		d.Images.Close()
		return nil, err
	}
	if err := d.startBackground(); err != nil {
		d.Close()
		return nil, err
	}
	if netDep != nil {
		if pruned, err := d.Network.Prune(ctx, d.Instances.Exists); err != nil {
			logger.Warn("prune network leases", "err", err)
		} else if len(pruned) > 0 {
			logger.Info("pruned network leases of instances that are gone", "instances", pruned)
		}
		ic := ingress.Config{
			StateDir: filepath.Join(p.Root, "ingress"), ListenAddress: cfg.IngressListen,
			AllowedPrivilegedPorts: cfg.IngressAllowedPrivilegedPorts,
			DialContext:            d.Network.DialContext,
			// A request for a Standby (or opted-in Stopped) target wakes it.
			Waker: ingressWaker{d.Instances}, WakeTimeout: time.Duration(cfg.IngressWakeTimeout),
			WakeMetrics: d.Metrics.NewWake(),
		}
		if cfg.NetworkNetNS == "" {
			// Guests share the daemon's namespace, where ingress
			// listens: the firewall opens the ingress ports to them.
			ic.Publisher = d.Network
		}
		d.Ingress, err = ingress.New(ctx, ic, ingressResolver{d.Instances}, logger.With("component", "ingress"))
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
	if d.Reclaimer != nil {
		d.Reclaimer.Close()
	}
	if d.Instances != nil {
		errs = append(errs, d.Instances.Close())
	}
	if d.Pushes != nil {
		errs = append(errs, d.Pushes.Close())
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
	return imageInfo(img), nil
}

// ResolveLocal implements instances.Images: only what the store holds (a
// pull under way is waited for), never a new pull.
func (r ImageResolver) ResolveLocal(ctx context.Context, ref string) (instances.ImageInfo, error) {
	img, err := r.Store.Get(ctx, ref)
	if errors.Is(err, images.ErrNotFound) {
		return instances.ImageInfo{}, fmt.Errorf("%w: %s", instances.ErrPullNotAllowed, ref)
	}
	if err != nil {
		return instances.ImageInfo{}, err
	}
	switch img.Status {
	case images.StatusPending, images.StatusPulling, images.StatusConverting:
		if w, werr := r.Store.Wait(ctx, ref); w != nil {
			img = w
		} else if werr != nil {
			return instances.ImageInfo{}, werr
		}
	}
	switch img.Status {
	case images.StatusReady:
		return imageInfo(img), nil
	case images.StatusFailed:
		return instances.ImageInfo{}, fmt.Errorf("%w: %s (its last pull failed: %s)", instances.ErrPullNotAllowed, img.Name, img.Error)
	}
	return instances.ImageInfo{}, fmt.Errorf("%w: %s is %s", instances.ErrImageNotReady, ref, img.Status)
}

func imageInfo(img *images.Image) instances.ImageInfo {
	return instances.ImageInfo{
		Name: img.Name, Digest: img.Digest, DiskPath: img.DiskPath, FSType: string(img.DiskFormat),
		Entrypoint: img.Config.Entrypoint, Cmd: img.Config.Cmd, Env: img.Config.Env,
		WorkingDir: img.Config.WorkingDir, User: img.Config.User, Platform: img.Platform,
	}
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

// startBackground runs the restart and health controllers (they subscribe
// to the lifecycle bus and drive the manager's start/stop paths) and the
// metrics feeds (transitions from the bus, pulls from the image store).
func (d *Daemon) startBackground() error {
	policyMetrics := d.Metrics.NewPolicy()
	var err error
	d.Restart, err = restart.New(restart.Config{
		Instances: d.Instances, Events: d.Events, Metrics: policyMetrics,
		Logger: d.Logger.With("component", "restart"),
	})
	if err != nil {
		return fmt.Errorf("restart controller: %w", err)
	}
	d.Health, err = health.New(health.Config{
		Instances: d.Instances, Prober: &prober{m: d.Instances, net: d.Network}, Events: d.Events,
		Restarter: d.Restart, Metrics: policyMetrics, Logger: d.Logger.With("component", "health"),
	})
	if err != nil {
		return fmt.Errorf("health controller: %w", err)
	}
	d.Expiry, err = expiry.New(expiry.Config{
		Instances: d.Instances, Events: d.Events, Metrics: d.Metrics.NewExpiry(),
		Logger: d.Logger.With("component", "expiry"),
	})
	if err != nil {
		return fmt.Errorf("expiry controller: %w", err)
	}
	d.Schedules, err = schedules.New(schedules.Config{
		Dir: d.Config.Paths().SchedulesDir(), Instances: d.Instances, Events: d.Events,
		Metrics: d.Metrics.NewSchedules(), Logger: d.Logger.With("component", "schedules"),
	})
	if err != nil {
		return fmt.Errorf("snapshot schedules: %w", err)
	}
	if d.AutoStandby, err = d.newAutoStandby(); err != nil {
		return err
	}
	d.Instances.SetRestartPending(d.Restart.RestartPending)
	d.Instances.SetPolicyChangedHook(func(id string) {
		d.Restart.Refresh(id)
		d.Health.Refresh(id)
		if d.AutoStandby != nil {
			d.AutoStandby.Refresh(id)
		}
		d.Expiry.Refresh(id)
	})
	d.Metrics.RegisterGauges(instanceCounts(d.Instances), imageCounts(d.Images))
	pulls, err := pullCounter(d.Images, d.Metrics)
	if err != nil {
		return err
	}
	transitions := func(ctx context.Context) error {
		d.Metrics.CountTransitions(ctx, d.Events, d.Logger.With("component", "metrics"))
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel, d.ctlDone = cancel, make(chan struct{})
	var wg sync.WaitGroup
	runs := []func(context.Context) error{d.Restart.Run, d.Health.Run, d.Expiry.Run, d.Schedules.Run, d.phaseFollower.Run, transitions, pulls}
	if d.AutoStandby != nil {
		runs = append(runs, d.AutoStandby.Run)
	}
	for _, run := range runs {
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

func instanceCounts(mgr *instances.Manager) metrics.StateCounter {
	return func(ctx context.Context) map[state.State]int {
		out := map[state.State]int{}
		list, err := mgr.List(ctx, instances.ListOptions{})
		if err != nil {
			return out
		}
		for _, in := range list {
			out[in.State]++
		}
		return out
	}
}

func imageCounts(store *images.Store) metrics.StatusCounter {
	return func(ctx context.Context) map[string]int {
		out := map[string]int{}
		list, err := store.List(ctx)
		if err != nil {
			return out
		}
		for _, img := range list {
			out[string(img.Status)]++
		}
		return out
	}
}

// pullCounter feeds hypeman_image_pulls_total from the image store's
// updates: a pull counts once, when its record first reaches ready or
// failed. It subscribes at once (so no update is missed) and returns the
// loop to run until ctx ends.
func pullCounter(store *images.Store, m *metrics.Metrics) (func(context.Context) error, error) {
	updates, unsubscribe, err := store.Subscribe("")
	if err != nil {
		return nil, fmt.Errorf("image updates: %w", err)
	}
	return func(ctx context.Context) error {
		defer unsubscribe()
		last := map[string]images.Status{}
		for {
			select {
			case <-ctx.Done():
				return nil
			case img, ok := <-updates:
				if !ok {
					return nil
				}
				prev := last[img.Name]
				last[img.Name] = img.Status
				if prev == img.Status {
					continue
				}
				switch img.Status {
				case images.StatusReady:
					m.ImagePullFinished(true)
				case images.StatusFailed:
					m.ImagePullFinished(false)
				}
			}
		}
	}, nil
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

func (p *prober) HTTP(ctx context.Context, id string, port int, scheme, path string) (int, error) {
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return p.dial(ctx, id, port)
		},
		// The guest's certificate is its own (no name or CA we could check).
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // probing the guest's own endpoint
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://guest"+path, nil)
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

func (p *prober) Exec(ctx context.Context, id string, command []string, workingDir string) (int, error) {
	res, err := p.m.Exec(ctx, id, agent.ExecRequest{Argv: command, Cwd: workingDir}, agent.ExecIO{})
	if err != nil {
		return 0, err
	}
	return res.ExitCode, nil
}

// ownRegistry reports whether a registry host ("host:port") is this
// daemon's API listener, where the built-in registry (/v2/) lives: the
// listener's port on a loopback or local-interface address, "localhost",
// or this machine's hostname. Image references through it name pushed
// images and are never pulled over the network.
func ownRegistry(listen string) func(host string) bool {
	_, lport, err := net.SplitHostPort(listen)
	if err != nil || lport == "" || lport == "0" {
		return nil
	}
	hostname, _ := os.Hostname()
	return func(host string) bool {
		h, port, err := net.SplitHostPort(host)
		if err != nil || port != lport {
			return false
		}
		if strings.EqualFold(h, "localhost") || (hostname != "" && strings.EqualFold(h, hostname)) {
			return true
		}
		ip := net.ParseIP(h)
		if ip == nil {
			return false
		}
		if ip.IsLoopback() {
			return true
		}
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return false
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
				return true
			}
		}
		return false
	}
}

// newLedger builds the allocation ledger from the resource settings: host
// capacity detected or configured, and a disk scanner over the data dir
// (rescanned at most every 10 s for admissions; GET /resources rescans).
func newLedger(cfg *config.Config, logger *slog.Logger) (*resources.Ledger, error) {
	rs, err := cfg.ResourceSettings()
	if err != nil {
		return nil, err
	}
	host, err := resources.DetectHost(rs, resources.HostProbe())
	if err != nil {
		return nil, err
	}
	p := cfg.Paths()
	scan := resources.NewDiskScanner(resources.DiskDirs{
		Images: p.ImagesDir(), OCICache: []string{p.RegistryDir(), p.PushesDir()},
		Instances: p.InstancesDir(), StandbyDirName: instances.StandbyDirName,
		Volumes: p.VolumesDir(), Snapshots: p.SnapshotsDir(),
	}, 10*time.Second, nil)
	return resources.NewLedger(resources.Config{Settings: rs, Host: host, Disk: scan, Logger: logger.With("component", "resources")})
}

// warmConfig is the warm pool's configuration (nil: warm create off).
func warmConfig(cfg *config.Config) *warm.Config {
	if !cfg.WarmEnabled {
		return nil
	}
	return &warm.Config{
		Dir: cfg.Paths().TemplatesDir(), MaxTemplates: cfg.WarmMaxTemplates, MaxBytes: int64(cfg.WarmMaxSize),
		RebuildOnStart: cfg.WarmRebuildOnStart,
	}
}
