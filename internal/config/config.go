// Package config owns hypemand's settings: the embedded defaults, the
// optional YAML file, HYPEMAN_* environment variables and flags.
//
// Why one struct with one precedence rule (defaults < file < env < flags):
// a daemon is configured by packagers (file), by service managers (env) and
// by people at a shell (flags); each layer must be able to override the one
// below without knowing about it, and `make run` must work with no file at
// all. The defaults are a real YAML file embedded in the binary, so the
// documented defaults and the effective ones cannot drift apart.
package config

import (
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"hypeman/internal/hypervisor"
	"hypeman/internal/paths"
	"hypeman/internal/resources"
	"hypeman/internal/units"
)

//go:embed default.yaml
var defaultYAML []byte

// DefaultYAML returns the embedded default configuration file.
func DefaultYAML() []byte { return append([]byte(nil), defaultYAML...) }

// Config is hypemand's configuration. Field tags name the YAML key; the
// environment variable is HYPEMAN_ + upper-cased key.
type Config struct {
	Listen             string   `json:"listen"`
	MetricsListen      string   `json:"metrics_listen"`
	DataDir            string   `json:"data_dir"`
	LogLevel           string   `json:"log_level"`
	KernelDir          string   `json:"kernel_dir"`
	KernelPath         string   `json:"kernel_path"`
	ModulesDir         string   `json:"modules_dir"`
	InitBinary         string   `json:"init_binary"`
	Accelerator        string   `json:"accelerator"`
	TSCKHz             int      `json:"tsc_khz"`
	InsecureRegistries []string `json:"insecure_registries"`
	DiskFormat         string   `json:"disk_format"`
	JWTSecretFile      string   `json:"jwt_secret_file"`
	DefaultSize        string   `json:"default_size"`
	DefaultVCPUs       int      `json:"default_vcpus"`
	DefaultOverlaySize string   `json:"default_overlay_size"`
	GuestStopTimeout   Duration `json:"guest_stop_timeout"`
	NetworkMode        string   `json:"network_mode"`
	NetworkBridge      string   `json:"network_bridge"`
	NetworkSubnet      string   `json:"network_subnet"`
	NetworkDNS         []string `json:"network_dns"`
	NetworkNetNS       string   `json:"network_netns"`
	IngressListen      string   `json:"ingress_listen"`
	// IngressAllowedPrivilegedPorts: host ports below 1024 ingress rules
	// may use. Env and flags take "80,443" or "none".
	IngressAllowedPrivilegedPorts []int `json:"ingress_allowed_privileged_ports"`
	// IngressWakeTimeout bounds how long a request is held while its
	// target wakes (internal/network/ingress wake.go).
	IngressWakeTimeout Duration `json:"ingress_wake_timeout"`

	// HTTP API limits (internal/httpserver).
	HTTPReadHeaderTimeout   Duration `json:"http_read_header_timeout"`
	HTTPBodyTimeout         Duration `json:"http_body_timeout"`
	HTTPBodyMinRate         Size     `json:"http_body_min_rate"`
	HTTPBodyIdleTimeout     Duration `json:"http_body_idle_timeout"`
	HTTPWriteTimeout        Duration `json:"http_write_timeout"`
	HTTPIdleTimeout         Duration `json:"http_idle_timeout"`
	HTTPMaxConnections      int      `json:"http_max_connections"`
	HTTPMaxConnectionsPerIP int      `json:"http_max_connections_per_ip"`

	// Which registries pulls may reach (internal/images).
	RegistriesAllow       []string `json:"registries_allow"`
	RegistriesAllowPublic bool     `json:"registries_allow_public"`

	// Caps on what one image may cost (pulls and pushes alike).
	ImageMaxUnpackedSize Size `json:"image_max_unpacked_size"`
	ImageMaxConfigSize   Size `json:"image_max_config_size"`
	ImageMaxManifestSize Size `json:"image_max_manifest_size"`
	ImageMaxLayers       int  `json:"image_max_layers"`
	// ImageOCICache keeps each image's manifest, config and compressed
	// layers next to its root disk, so it can be pushed to another
	// registry (POST /pushes). false saves that disk space.
	ImageOCICache bool `json:"image_oci_cache"`
	// PushConcurrency bounds pushes to other registries running at once.
	PushConcurrency int `json:"push_concurrency"`
	// Caps on the built-in registry's uploads.
	RegistryMaxBlobSize Size `json:"registry_max_blob_size"`
	RegistryMaxPushSize Size `json:"registry_max_push_size"`
	// VolumeMaxSizeGB bounds a volume's size_gb (internal/volumes).
	VolumeMaxSizeGB int `json:"volume_max_size_gb"`

	// SnapshotCompression is the server default for standby and snapshot
	// memory: none, zstd[:1-19] or lz4[:0-9]. CompressSnapshots (older
	// knob) = zstd:1 when SnapshotCompression is empty.
	SnapshotCompression string `json:"snapshot_compression"`
	CompressSnapshots   bool   `json:"compress_snapshots"`

	// Console (app) log rotation per instance: rotate at SerialLogMaxSize
	// (0 = never), keep SerialLogFiles rotated files.
	SerialLogMaxSize Size `json:"serial_log_max_size"`
	SerialLogFiles   int  `json:"serial_log_files"`

	// Host resources and admission (internal/resources): oversubscription
	// ratios (effective limit = capacity × ratio) and capacity overrides
	// (0 = detect; memory_reserve is kept back from a detected MemTotal).
	OversubCPU     float64 `json:"oversub_cpu"`
	OversubMemory  float64 `json:"oversub_memory"`
	OversubDisk    float64 `json:"oversub_disk"`
	OversubNetwork float64 `json:"oversub_network"`
	OversubDiskIO  float64 `json:"oversub_disk_io"`
	CPULimit       int     `json:"cpu_limit"`
	MemoryLimit    Size    `json:"memory_limit"`
	MemoryReserve  Size    `json:"memory_reserve"`
	DiskLimit      Size    `json:"disk_limit"`
	// NetworkLimit and DiskIOLimit are rates ("10Gbps", "1GB/s"; "" or
	// "0" = detect / default).
	NetworkLimit string `json:"network_limit"`
	DiskIOLimit  string `json:"disk_io_limit"`

	// Warm create (internal/warm): pre-booted templates per shape,
	// built in the background after the first cold create of a shape.
	WarmEnabled        bool `json:"warm_enabled"`
	WarmMaxTemplates   int  `json:"warm_max_templates"`
	WarmMaxSize        Size `json:"warm_max_size"`
	WarmRebuildOnStart bool `json:"warm_rebuild_on_start"`
}

// Size is a byte count written as "16GB", "512MB", "64KB" or a number
// (binary units, see internal/sizes).
type Size int64

func (s Size) MarshalJSON() ([]byte, error) {
	return []byte(strconv.Quote(units.FormatSize(int64(s)))), nil
}

func (s *Size) UnmarshalJSON(b []byte) error {
	str := string(b)
	if u, err := strconv.Unquote(str); err == nil {
		str = u
	}
	n, err := units.ParseSize(str)
	if err != nil {
		return err
	}
	*s = Size(n)
	return nil
}

// Duration is a time.Duration written as a Go duration string in YAML.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(strconv.Quote(time.Duration(d).String())), nil
}

func (d *Duration) UnmarshalJSON(b []byte) error {
	s, err := strconv.Unquote(string(b))
	if err != nil {
		return fmt.Errorf("duration must be a string like \"10s\": %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Load builds the configuration: defaults, then file (if non-empty), then
// environment (getenv), then the flags the caller set explicitly.
func Load(file string, getenv func(string) string, setFlags map[string]string) (*Config, error) {
	var c Config
	if err := yaml.UnmarshalStrict(defaultYAML, &c); err != nil {
		return nil, fmt.Errorf("embedded default config: %w", err)
	}
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("config file: %w", err)
		}
		if err := yaml.UnmarshalStrict(b, &c); err != nil {
			return nil, fmt.Errorf("config file %s: %w", file, err)
		}
	}
	for key, val := range envOverrides(getenv) {
		if err := c.set(key, val); err != nil {
			return nil, fmt.Errorf("environment HYPEMAN_%s: %w", strings.ToUpper(key), err)
		}
	}
	for key, val := range setFlags {
		if err := c.set(key, val); err != nil {
			return nil, fmt.Errorf("flag --%s: %w", strings.ReplaceAll(key, "_", "-"), err)
		}
	}
	return &c, c.Validate()
}

// Keys lists every configuration key (YAML names).
func Keys() []string {
	t := reflect.TypeOf(Config{})
	out := make([]string, t.NumField())
	for i := range out {
		out[i] = strings.Split(t.Field(i).Tag.Get("json"), ",")[0]
	}
	return out
}

func envOverrides(getenv func(string) string) map[string]string {
	out := map[string]string{}
	if getenv == nil {
		return out
	}
	for _, k := range Keys() {
		if v := getenv("HYPEMAN_" + strings.ToUpper(k)); v != "" {
			out[k] = v
		}
	}
	return out
}

// set assigns one key from its string form (env or flag).
func (c *Config) set(key, val string) error {
	v := reflect.ValueOf(c).Elem()
	t := v.Type()
	for i := range t.NumField() {
		if strings.Split(t.Field(i).Tag.Get("json"), ",")[0] != key {
			continue
		}
		f := v.Field(i)
		switch f.Interface().(type) {
		case string:
			f.SetString(val)
		case bool:
			b, err := strconv.ParseBool(val)
			if err != nil {
				return fmt.Errorf("%q is not a boolean", val)
			}
			f.SetBool(b)
		case float64:
			n, err := strconv.ParseFloat(val, 64)
			if err != nil {
				return fmt.Errorf("%q is not a number", val)
			}
			f.SetFloat(n)
		case int:
			n, err := strconv.Atoi(val)
			if err != nil {
				return fmt.Errorf("%q is not an integer", val)
			}
			f.SetInt(int64(n))
		case []string:
			var parts []string
			for p := range strings.SplitSeq(val, ",") {
				if p = strings.TrimSpace(p); p != "" {
					parts = append(parts, p)
				}
			}
			f.Set(reflect.ValueOf(parts))
		case []int:
			ports := []int{}
			if strings.TrimSpace(val) != "none" {
				for p := range strings.SplitSeq(val, ",") {
					n, err := strconv.Atoi(strings.TrimSpace(p))
					if err != nil {
						return fmt.Errorf("%q is not a comma-separated list of integers (or \"none\")", val)
					}
					ports = append(ports, n)
				}
			}
			f.Set(reflect.ValueOf(ports))
		case Size:
			n, err := units.ParseSize(val)
			if err != nil {
				return err
			}
			f.SetInt(n)
		case Duration:
			d, err := time.ParseDuration(val)
			if err != nil {
				return err
			}
			f.Set(reflect.ValueOf(Duration(d)))
		default:
			return fmt.Errorf("unsupported type for %s", key)
		}
		return nil
	}
	return fmt.Errorf("unknown setting %q", key)
}

// Validate checks values that would otherwise fail later and obscurely.
func (c *Config) Validate() error {
	var errs []error
	if c.Listen == "" {
		errs = append(errs, errors.New("listen must not be empty"))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data_dir must not be empty"))
	}
	switch c.Accelerator {
	case "auto", "kvm", "tcg":
	default:
		errs = append(errs, fmt.Errorf("accelerator %q: want auto, kvm or tcg", c.Accelerator))
	}
	switch c.DiskFormat {
	case "auto", "erofs", "ext4":
	default:
		errs = append(errs, fmt.Errorf("disk_format %q: want auto, erofs or ext4", c.DiskFormat))
	}
	switch c.NetworkMode {
	case "auto", "bridge", "user", "none":
	default:
		errs = append(errs, fmt.Errorf("network_mode %q: want auto, bridge, user or none", c.NetworkMode))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log_level %q: want debug, info, warn or error", c.LogLevel))
	}
	if c.TSCKHz < 0 {
		errs = append(errs, errors.New("tsc_khz must be >= 0"))
	}
	for _, d := range []struct {
		key string
		v   Duration
	}{
		{"guest_stop_timeout", c.GuestStopTimeout}, {"http_read_header_timeout", c.HTTPReadHeaderTimeout},
		{"http_body_timeout", c.HTTPBodyTimeout}, {"http_body_idle_timeout", c.HTTPBodyIdleTimeout},
		{"http_write_timeout", c.HTTPWriteTimeout}, {"http_idle_timeout", c.HTTPIdleTimeout},
		{"ingress_wake_timeout", c.IngressWakeTimeout},
	} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s must be >= 0", d.key))
		}
	}
	for _, n := range []struct {
		key string
		v   int64
	}{
		{"http_body_min_rate", int64(c.HTTPBodyMinRate)}, {"http_max_connections", int64(c.HTTPMaxConnections)},
		{"http_max_connections_per_ip", int64(c.HTTPMaxConnectionsPerIP)},
		{"image_max_unpacked_size", int64(c.ImageMaxUnpackedSize)}, {"image_max_config_size", int64(c.ImageMaxConfigSize)},
		{"image_max_manifest_size", int64(c.ImageMaxManifestSize)}, {"image_max_layers", int64(c.ImageMaxLayers)},
		{"registry_max_blob_size", int64(c.RegistryMaxBlobSize)}, {"registry_max_push_size", int64(c.RegistryMaxPushSize)},
		{"serial_log_max_size", int64(c.SerialLogMaxSize)}, {"volume_max_size_gb", int64(c.VolumeMaxSizeGB)},
	} {
		if n.v < 0 {
			errs = append(errs, fmt.Errorf("%s must be >= 0 (0 = no limit)", n.key))
		}
	}
	if c.IngressListen != "" && net.ParseIP(c.IngressListen) == nil {
		errs = append(errs, fmt.Errorf("ingress_listen %q: want an IP address (127.0.0.1 for this host only, 0.0.0.0 for every address)", c.IngressListen))
	}
	for _, p := range c.IngressAllowedPrivilegedPorts {
		if p < 1 || p > 1023 {
			errs = append(errs, fmt.Errorf("ingress_allowed_privileged_ports: %d is not a privileged port (1-1023); ports from 1024 up need no permission", p))
		}
	}
	if _, err := c.ResolvedSnapshotCompression(); err != nil {
		errs = append(errs, err)
	}
	if c.PushConcurrency < 1 || c.PushConcurrency > 8 {
		errs = append(errs, fmt.Errorf("push_concurrency %d: want 1 to 8 pushes at once", c.PushConcurrency))
	}
	if _, err := c.ResourceSettings(); err != nil {
		errs = append(errs, err)
	}
	if c.SerialLogFiles < 1 {
		errs = append(errs, fmt.Errorf("serial_log_files %d: keep at least 1 rotated file", c.SerialLogFiles))
	}
	return errors.Join(errs...)
}

// ResolvedSnapshotCompression is the server default compression:
// snapshot_compression, or zstd:1 when only compress_snapshots is set.
func (c *Config) ResolvedSnapshotCompression() (hypervisor.Compression, error) {
	zstd1 := hypervisor.Compression{Algorithm: hypervisor.CompressionZstd, Level: hypervisor.ZstdDefaultLevel}
	if c.SnapshotCompression == "" {
		if c.CompressSnapshots {
			return zstd1, nil
		}
		return hypervisor.Compression{}, nil
	}
	comp, err := hypervisor.ParseCompression(c.SnapshotCompression)
	if err != nil {
		return comp, fmt.Errorf("snapshot_compression %q: want none, zstd[:1-19] or lz4[:0-9]: %w", c.SnapshotCompression, err)
	}
	if c.CompressSnapshots && comp != zstd1 {
		return comp, fmt.Errorf("compress_snapshots: true means zstd:1 but snapshot_compression is %s: set only snapshot_compression", comp)
	}
	return comp, nil
}

// ResourceSettings are the resource keys for internal/resources, validated.
func (c *Config) ResourceSettings() (resources.Settings, error) {
	s := resources.Settings{
		DataDir: c.DataDir, CPULimit: c.CPULimit, MemoryLimit: int64(c.MemoryLimit), MemoryReserve: int64(c.MemoryReserve),
		DiskLimit: int64(c.DiskLimit),
		Ratios: resources.Ratios{resources.CPU: c.OversubCPU, resources.Memory: c.OversubMemory, resources.Disk: c.OversubDisk,
			resources.Network: c.OversubNetwork, resources.DiskIO: c.OversubDiskIO},
	}
	for _, r := range []struct {
		key, val string
		dst      *int64
	}{{"network_limit", c.NetworkLimit, &s.NetworkLimit}, {"disk_io_limit", c.DiskIOLimit, &s.DiskIOLimit}} {
		if r.val == "" {
			continue
		}
		rate, err := units.ParseRate(r.val)
		if err != nil {
			return s, fmt.Errorf("%s: %w", r.key, err)
		}
		*r.dst = rate.BytesPerSec
	}
	return s, s.Validate()
}

// Paths returns the data dir layout.
func (c *Config) Paths() paths.Paths { return paths.New(c.DataDir) }

// ResolvedKernelDir is kernel_dir or its default under the data dir.
func (c *Config) ResolvedKernelDir() string {
	if c.KernelDir != "" {
		return c.KernelDir
	}
	return c.Paths().KernelDir()
}

// ResolvedSecretFile is jwt_secret_file or its default under the data dir.
func (c *Config) ResolvedSecretFile() string {
	if c.JWTSecretFile != "" {
		return c.JWTSecretFile
	}
	return c.Paths().JWTSecret()
}

// ResolvedInitBinary is init_binary or hypeman-init beside the executable.
func (c *Config) ResolvedInitBinary() string {
	if c.InitBinary != "" {
		return c.InitBinary
	}
	exe, err := os.Executable()
	if err != nil {
		return "hypeman-init"
	}
	return filepath.Join(filepath.Dir(exe), "hypeman-init")
}

// BindFlags registers one flag per key on fs; after fs.Parse, SetFlags
// returns the ones the user gave.
func BindFlags(fs *flag.FlagSet) func() map[string]string {
	vals := map[string]*string{}
	for _, k := range Keys() {
		vals[k] = fs.String(strings.ReplaceAll(k, "_", "-"), "", "overrides config key "+k)
	}
	return func() map[string]string {
		out := map[string]string{}
		fs.Visit(func(f *flag.Flag) {
			k := strings.ReplaceAll(f.Name, "-", "_")
			if p, ok := vals[k]; ok {
				out[k] = *p
			}
		})
		return out
	}
}
