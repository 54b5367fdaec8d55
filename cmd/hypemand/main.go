// Command hypemand is the hypeman server: it runs OCI images as VMs and
// serves the hypeman-compatible REST API.
//
//	hypemand [--config FILE] [--listen ADDR] [--data-dir DIR] [--<any-setting> VALUE]
//
// Settings come from the embedded defaults, then FILE, then HYPEMAN_*
// environment variables, then flags (see internal/config and the README).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	pathpkg "path"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"hypeman/internal/api"
	"hypeman/internal/auth"
	"hypeman/internal/config"
	"hypeman/internal/daemon"
	"hypeman/internal/guest/agent"
	"hypeman/internal/httpserver"
	"hypeman/internal/instances"
	"hypeman/internal/network"
	"hypeman/internal/registry"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	if err := run(os.Args[1:], os.Getenv, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "hypemand:", err)
		}
		os.Exit(1)
	}
}

func run(args []string, getenv func(string) string, stderr io.Writer) error {
	fs := flag.NewFlagSet("hypemand", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configFile := fs.String("config", getenv("HYPEMAN_CONFIG"), "YAML config file (settings: see README)")
	printDefaults := fs.Bool("print-default-config", false, "print the embedded default config and exit")
	setFlags := config.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *printDefaults {
		_, err := os.Stdout.Write(config.DefaultYAML())
		return err
	}
	cfg, err := config.Load(*configFile, getenv, setFlags())
	if err != nil {
		return err
	}
	logger := newLogger(cfg.LogLevel, stderr)
	slog.SetDefault(logger)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	// Say what bridge networking will change on the host before doing it.
	fmt.Fprint(stderr, networkNotice(cfg, network.BridgeUnavailable))
	d, err := daemon.New(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer d.Close()

	secretFile := cfg.ResolvedSecretFile()
	_, statErr := os.Stat(secretFile)
	secret, err := auth.LoadOrCreateSecret(secretFile)
	if err != nil {
		return fmt.Errorf("api secret: %w", err)
	}
	if os.IsNotExist(statErr) {
		logger.Info("created API token secret", "file", secretFile)
	}

	var ingresses api.Ingresses
	if d.Ingress != nil {
		ingresses = d.Ingress
	}
	netMode, netReason := "none", "networking is disabled (network_mode: none)"
	if d.Network != nil {
		c := d.Network.Capability()
		netMode, netReason = string(c.Mode), c.Reason
	}
	srv, err := api.NewServer(api.Options{
		Ingresses: ingresses,
		Volumes:   d.Volumes,
		Resources: d.Resources,
		Reclaimer: d.Reclaimer,
		Instances: d.Instances,
		Images:    d.Images,
		Waiter:    d.Instances,
		Stat:      pathStatter{Instances: d.Instances},
		Lifecycle: d.Instances,
		Templates: d.Instances,
		Snapshots: d.Instances,
		Schedules: d.Schedules,
		Guest:     d.Instances,
		// Attach/detach; without a volume store they refuse with a 400
		// naming volumes.
		InstanceVolumes: d.Instances,
		// nil interface (status unsupported) without bridge networking.
		AutoStandby: autoStandbyAPI(d),
		Events:      d.Events,
		Secret:      secret,
		Version:     version,
		Phases:      d.Phases,
		Pushes:      d.Pushes,
		Capabilities: func(context.Context) api.Capabilities {
			c := api.Capabilities{
				Accelerator: d.Hypervisor.Accel(), NetworkMode: netMode, NetworkReason: netReason,
				Platform:        "linux/amd64",
				RuntimeFeatures: []string{"snapshots", "standby", "fork", "pause", "disk-io-limit"},
			}
			if d.Network != nil {
				c.Gateway, c.Subnet = d.Network.GuestNetwork()
			}
			c.WarmEnabled, c.WarmReason, c.WarmStatus = d.Instances.WarmStatus()
			return c
		},
		RegistryDir: cfg.Paths().RegistryDir(),
		RegistryLimits: registry.Limits{
			MaxManifestBytes: int64(cfg.ImageMaxManifestSize),
			MaxBlobBytes:     int64(cfg.RegistryMaxBlobSize),
			MaxPushBytes:     int64(cfg.RegistryMaxPushSize),
		},
		Logger:  logger.With("component", "api"),
		Metrics: d.Metrics.Registry,
	})
	if err != nil {
		return err
	}
	defer srv.Close()

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	limits := httpLimits(cfg, logger)
	ln = httpserver.Listen(ln, limits, logger.With("component", "http"))
	httpSrv := httpserver.NewServer(srv, limits, logger.With("component", "http"))
	errc := make(chan error, 2)
	go func() { errc <- httpSrv.Serve(ln) }()

	var metricsSrv *http.Server
	if cfg.MetricsListen != "" {
		mln, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			return fmt.Errorf("metrics listen %s: %w", cfg.MetricsListen, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(d.Metrics.Registry, promhttp.HandlerOpts{}))
		metricsSrv = httpserver.NewServer(mux, limits, logger.With("component", "metrics-http"))
		go func() {
			errc <- metricsSrv.Serve(httpserver.Listen(mln, limits, logger.With("component", "metrics-http")))
		}()
		logger.Info("metrics listening", "addr", mln.Addr().String())
	}
	logger.Info("hypemand listening", "addr", ln.Addr().String(), "data_dir", cfg.DataDir, "version", version,
		"accelerator", d.Hypervisor.Accel().Accel)
	fmt.Fprintf(stderr, "\nhypemand is ready on http://%s\n  get a token:  bin/hypeman-token --data-dir %s\n  then:         export HYPEMAN_BASE_URL=http://%s HYPEMAN_API_KEY=<token>\n\n",
		ln.Addr(), cfg.DataDir, ln.Addr())

	select {
	case <-ctx.Done():
		logger.Info("shutting down (running VMs keep running and are re-adopted on next start)")
	case err := <-errc:
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = httpSrv.Shutdown(sctx)
	if metricsSrv != nil {
		_ = metricsSrv.Shutdown(sctx)
	}
	return nil
}

// httpLimits turns the http_* settings into the API server's limits. The
// connection cap is kept under half of the descriptor limit (raised to the
// hard limit first), so a flood cannot take the descriptors VMs and image
// pulls need.
func httpLimits(cfg *config.Config, logger *slog.Logger) httpserver.Limits {
	l := httpserver.Limits{
		ReadHeaderTimeout: time.Duration(cfg.HTTPReadHeaderTimeout),
		BodyTimeout:       time.Duration(cfg.HTTPBodyTimeout),
		BodyMinRate:       int64(cfg.HTTPBodyMinRate),
		BodyIdleTimeout:   time.Duration(cfg.HTTPBodyIdleTimeout),
		WriteTimeout:      time.Duration(cfg.HTTPWriteTimeout),
		IdleTimeout:       time.Duration(cfg.HTTPIdleTimeout),
		MaxConns:          cfg.HTTPMaxConnections,
		MaxConnsPerIP:     cfg.HTTPMaxConnectionsPerIP,
	}
	nofile, err := httpserver.RaiseNoFileLimit()
	if err != nil {
		logger.Warn("file descriptor limit", "err", err)
	}
	if budget := int(nofile / 2); nofile > 0 && (l.MaxConns <= 0 || l.MaxConns > budget) {
		logger.Info("http_max_connections bounded by half the file descriptor limit", "configured", l.MaxConns, "nofile", nofile, "effective", budget)
		l.MaxConns = budget
	}
	return l
}

func newLogger(level string, w io.Writer) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(strings.ToUpper(level)))
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}

// pathStatter adapts the manager's agent-backed Stat to the API's
// PathStatter (GET /instances/{id}/stat).
type pathStatter struct{ Instances *instances.Manager }

// StatPath implements api.PathStatter. With followLinks, symlinks are
// resolved (up to 16 hops) the way stat(2) would.
func (p pathStatter) StatPath(ctx context.Context, ref, path string, followLinks bool) (*api.PathStat, error) {
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

// autoStandbyAPI is the daemon's controller as the API option, or a nil
// interface when there is none.
func autoStandbyAPI(d *daemon.Daemon) api.AutoStandby {
	if d.AutoStandby == nil {
		return nil
	}
	return d.AutoStandby
}
