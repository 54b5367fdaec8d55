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
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"hypeman/internal/paths"
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
	CompressSnapshots  bool     `json:"compress_snapshots"`
	SerialLogMaxSize   string   `json:"serial_log_max_size"`
	SerialLogFiles     int      `json:"serial_log_files"`
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
	if c.GuestStopTimeout < 0 {
		errs = append(errs, errors.New("guest_stop_timeout must be >= 0"))
	}
	if c.SerialLogFiles < 1 {
		errs = append(errs, fmt.Errorf("serial_log_files %d: keep at least 1 rotated file", c.SerialLogFiles))
	}
	return errors.Join(errs...)
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
