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
	"os"
	pathpkg "path"
	"strings"
	"time"

	"hypeman/internal/api"
	"hypeman/internal/config"
	"hypeman/internal/events"
	"hypeman/internal/guest/agent"
	"hypeman/internal/hypervisor"
	"hypeman/internal/hypervisor/qemu"
	"hypeman/internal/images"
	"hypeman/internal/instances"
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
	StartedAt  time.Time
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
	d.Hypervisor, err = qemu.New(ctx, qemu.Config{
		Accel:  hypervisor.Accelerator(cfg.Accelerator),
		TSCKHz: cfg.TSCKHz,
		Logger: logger.With("component", "qemu"),
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
	d.Events = events.New(events.Options{})
	d.Instances, err = instances.New(ctx, instances.Config{
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
	})
	if err != nil {
		d.Images.Close()
		return nil, fmt.Errorf("instance manager: %w", err)
	}
	return d, nil
}

// Close stops the core. Running VMs keep running; the next daemon re-adopts
// them.
func (d *Daemon) Close() error {
	var errs []error
	if d.Instances != nil {
		errs = append(errs, d.Instances.Close())
	}
	if d.Images != nil {
		errs = append(errs, d.Images.Close())
	}
	if d.Events != nil {
		d.Events.Close()
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

// PathStatter adapts the manager's agent-backed Stat to the API's
// PathStatter (GET /instances/{id}/stat).
type PathStatter struct{ Instances *instances.Manager }

// StatPath implements api.PathStatter. With followLinks, symlinks are
// resolved (up to 16 hops) the way stat(2) would.
func (p PathStatter) StatPath(ctx context.Context, ref, path string, followLinks bool) (*api.PathStat, error) {
	for hop := 0; ; hop++ {
		fi, err := p.Instances.Stat(ctx, ref, path)
		var re *agent.RemoteError
		if errors.As(err, &re) {
			return &api.PathStat{Error: re.Error()}, nil
		}
		if err != nil {
			return nil, err
		}
		isLink := fi.Mode&os.ModeSymlink != 0
		if isLink && followLinks && hop < 16 {
			target := fi.LinkTarget
			if !strings.HasPrefix(target, "/") {
				target = pathpkg.Join(pathpkg.Dir(path), target)
			}
			path = target
			continue
		}
		if isLink && followLinks {
			return &api.PathStat{Error: "too many levels of symbolic links"}, nil
		}
		return &api.PathStat{
			Exists: fi.Exists, IsDir: fi.IsDir, IsFile: fi.Exists && fi.Mode.IsRegular(), IsSymlink: isLink,
			LinkTarget: fi.LinkTarget, Mode: uint32(fi.Mode.Perm()), Size: fi.Size,
		}, nil
	}
}
