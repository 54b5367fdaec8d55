// Command hypeman-kubelet makes one hypemand a Kubernetes node (a
// virtual-kubelet provider): pods scheduled to the node run as hypeman
// instances. All logic lives in internal/kubelet; this is the process
// wrapper: flags, logging, signals.
//
//	hypeman-kubelet --kubeconfig PATH --client-ca-file PATH [--node-name NAME]
//	    [--server URL] [--listen ADDR] [--node-ip IP] [--tls-cert-file F --tls-key-file F]
//	    [--taint KEY=VALUE:EFFECT] [--max-pods N] [--health-interval DUR] [--log-level LEVEL]
//
// The hypemand API token comes from $HYPEMAN_API_KEY, the default server
// from $HYPEMAN_BASE_URL (as for the hypeman CLI).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	vklog "github.com/virtual-kubelet/virtual-kubelet/log"
	vkslog "github.com/virtual-kubelet/virtual-kubelet/log/slog"
	"k8s.io/klog/v2"

	"hypeman/internal/kubelet"
)

// version is set at build time (-ldflags "-X main.version=..."); else the
// module version.
var version = ""

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "hypeman-kubelet:", err)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	fs := flag.NewFlagSet("hypeman-kubelet", flag.ContinueOnError)
	fs.SetOutput(stderr)
	hostname, _ := os.Hostname()
	server := getenv("HYPEMAN_BASE_URL")
	if server == "" {
		server = "http://127.0.0.1:8080"
	}
	var cfg kubelet.Config
	var logLevel string
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig of the cluster to join (required)")
	fs.StringVar(&cfg.NodeName, "node-name", strings.ToLower(hostname), "node name")
	fs.StringVar(&cfg.Server, "server", server, "hypemand base URL (default $HYPEMAN_BASE_URL, else http://127.0.0.1:8080)")
	fs.StringVar(&cfg.Listen, "listen", "0.0.0.0:10250", "kubelet API (TLS) address")
	fs.StringVar(&cfg.NodeIP, "node-ip", "", "node InternalIP the apiserver dials for logs/exec (default: first non-loopback IPv4)")
	fs.StringVar(&cfg.ClientCAFile, "client-ca-file", "", "CA of the client certificates the apiserver presents (required)")
	fs.StringVar(&cfg.TLSCertFile, "tls-cert-file", "", "serving certificate (default: self-signed, made at start)")
	fs.StringVar(&cfg.TLSKeyFile, "tls-key-file", "", "serving key")
	fs.StringVar(&cfg.Taint, "taint", kubelet.DefaultTaint, `node taint KEY=VALUE:EFFECT ("" = none)`)
	fs.Int64Var(&cfg.MaxPods, "max-pods", 110, "pods capacity")
	fs.DurationVar(&cfg.HealthInterval, "health-interval", 2*time.Second, "hypemand /health poll period (NotReady after 2 misses)")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return fmt.Errorf("invalid --log-level %q: use debug, info, warn or error", logLevel)
	}
	switch {
	case cfg.Kubeconfig == "":
		return errors.New("--kubeconfig is required")
	case cfg.NodeName == "":
		return errors.New("--node-name is required (no hostname)")
	case cfg.MaxPods < 1:
		return errors.New("--max-pods must be 1 or more")
	case cfg.HealthInterval <= 0:
		return errors.New("--health-interval must be positive")
	}
	if cfg.NodeIP == "" {
		ip, err := firstIPv4()
		if err != nil {
			return err
		}
		cfg.NodeIP = ip
	} else if net.ParseIP(cfg.NodeIP) == nil {
		return fmt.Errorf("invalid --node-ip %q", cfg.NodeIP)
	}
	cfg.Token = strings.TrimSpace(getenv("HYPEMAN_API_KEY"))
	cfg.Version = ourVersion()
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	cfg.Logger = logger
	// client-go and virtual-kubelet log through klog and their own logger:
	// both go to ours (they are process-wide, hence set here).
	klog.SetSlogLogger(logger.With("component", "client-go"))
	// virtual-kubelet builds a default client from $KUBECONFIG before it
	// takes ours; point it at the same file instead of a failing
	// in-cluster lookup and its warning.
	os.Setenv("KUBECONFIG", cfg.Kubeconfig)
	vklog.L = vkslog.FromSlog(logger.With("component", "virtual-kubelet"))
	return kubelet.Run(ctx, cfg)
}

// firstIPv4 is the first non-loopback IPv4 address of an up interface.
func firstIPv4() (string, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return "", fmt.Errorf("list interfaces: %w", err)
	}
	for _, i := range ifs {
		if i.Flags&net.FlagUp == 0 || i.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, _ := i.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
				return n.IP.String(), nil
			}
		}
	}
	return "", errors.New("no non-loopback IPv4 address found: set --node-ip")
}

func ourVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
