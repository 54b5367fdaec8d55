package config

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestDefaults(t *testing.T) {
	c, err := Load("", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:8080" || c.DataDir != "/var/lib/hypeman" || c.Accelerator != "auto" || time.Duration(c.GuestStopTimeout) != 10*time.Second {
		t.Fatalf("defaults: %+v", c)
	}
	if c.ResolvedKernelDir() != "/var/lib/hypeman/system/kernel" {
		t.Fatal(c.ResolvedKernelDir())
	}
}

func TestPrecedenceFileEnvFlags(t *testing.T) {
	f := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(f, []byte("listen: 0.0.0.0:1\ndata_dir: /file\naccelerator: tcg\ninsecure_registries: [a]\n"), 0o644)
	env := map[string]string{"HYPEMAN_DATA_DIR": "/env", "HYPEMAN_INSECURE_REGISTRIES": "x, y", "HYPEMAN_GUEST_STOP_TIMEOUT": "3s"}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	get := BindFlags(fs)
	if err := fs.Parse([]string{"--data-dir", "/flag"}); err != nil {
		t.Fatal(err)
	}
	c, err := Load(f, func(k string) string { return env[k] }, get())
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "0.0.0.0:1" || c.DataDir != "/flag" || c.Accelerator != "tcg" || len(c.InsecureRegistries) != 2 || c.InsecureRegistries[1] != "y" || time.Duration(c.GuestStopTimeout) != 3*time.Second {
		t.Fatalf("precedence: %+v", c)
	}
}

func TestInvalid(t *testing.T) {
	for name, env := range map[string]map[string]string{
		"accel":    {"HYPEMAN_ACCELERATOR": "xen"},
		"int":      {"HYPEMAN_TSC_KHZ": "fast"},
		"duration": {"HYPEMAN_GUEST_STOP_TIMEOUT": "soon"},
		"format":   {"HYPEMAN_DISK_FORMAT": "zfs"},
	} {
		if _, err := Load("", func(k string) string { return env[k] }, nil); err == nil {
			t.Errorf("%s: want error", name)
		}
	}
	f := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(f, []byte("listn: typo\n"), 0o644)
	if _, err := Load(f, nil, nil); err == nil {
		t.Error("unknown key in file must fail")
	}
}

func TestLimitsSettings(t *testing.T) {
	c, err := Load("", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.ImageMaxUnpackedSize != 16<<30 || c.HTTPBodyMinRate != 16<<10 || c.HTTPMaxConnectionsPerIP != 256 ||
		time.Duration(c.HTTPBodyTimeout) != 30*time.Second || !c.RegistriesAllowPublic || len(c.RegistriesAllow) != 0 {
		t.Fatalf("defaults: %+v", c)
	}
	f := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(f, []byte("image_max_config_size: 2MB\nregistry_max_blob_size: 1073741824\nregistries_allow: [10.0.0.0/8]\n"), 0o644)
	env := map[string]string{"HYPEMAN_IMAGE_MAX_UNPACKED_SIZE": "1.5GB", "HYPEMAN_REGISTRIES_ALLOW": "127.0.0.1:5000, reg.lan"}
	c, err = Load(f, func(k string) string { return env[k] }, map[string]string{"http_body_min_rate": "64KB"})
	if err != nil {
		t.Fatal(err)
	}
	if c.ImageMaxConfigSize != 2<<20 || c.RegistryMaxBlobSize != 1<<30 || c.ImageMaxUnpackedSize != 3<<29 ||
		c.HTTPBodyMinRate != 64<<10 || len(c.RegistriesAllow) != 2 || c.RegistriesAllow[1] != "reg.lan" {
		t.Fatalf("limits: %+v", c)
	}
	for name, env := range map[string]map[string]string{
		"size":      {"HYPEMAN_IMAGE_MAX_LAYERS": "many"},
		"size unit": {"HYPEMAN_REGISTRY_MAX_PUSH_SIZE": "10XB"},
		"negative":  {"HYPEMAN_HTTP_MAX_CONNECTIONS": "-1"},
		"timeout":   {"HYPEMAN_HTTP_BODY_TIMEOUT": "-1s"},
	} {
		if _, err := Load("", func(k string) string { return env[k] }, nil); err == nil {
			t.Errorf("%s: want error", name)
		}
	}
	// The defaults print back as sizes, not byte counts.
	if b, _ := json.Marshal(c.ImageMaxUnpackedSize); string(b) != `"1536MB"` {
		t.Errorf("size marshals as %s", b)
	}
}

// Ingress is safe by default: loopback only, and no privileged host port
// but HTTP's and HTTPS's.
func TestIngressDefaultsAndOverrides(t *testing.T) {
	c, err := Load("", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.IngressListen != "127.0.0.1" || !slices.Equal(c.IngressAllowedPrivilegedPorts, []int{80, 443}) {
		t.Fatalf("ingress defaults: listen %q, privileged ports %v", c.IngressListen, c.IngressAllowedPrivilegedPorts)
	}
	for val, want := range map[string][]int{"22, 80": {22, 80}, "none": {}} {
		env := map[string]string{"HYPEMAN_INGRESS_ALLOWED_PRIVILEGED_PORTS": val, "HYPEMAN_INGRESS_LISTEN": "0.0.0.0"}
		c, err := Load("", func(k string) string { return env[k] }, nil)
		if err != nil {
			t.Fatal(err)
		}
		if c.IngressListen != "0.0.0.0" || c.IngressAllowedPrivilegedPorts == nil || !slices.Equal(c.IngressAllowedPrivilegedPorts, want) {
			t.Fatalf("%q: listen %q, ports %#v", val, c.IngressListen, c.IngressAllowedPrivilegedPorts)
		}
	}
	f := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(f, []byte("ingress_allowed_privileged_ports: []\n"), 0o644)
	if c, err := Load(f, nil, nil); err != nil || c.IngressAllowedPrivilegedPorts == nil || len(c.IngressAllowedPrivilegedPorts) != 0 {
		t.Fatalf("file []: %#v, %v", c.IngressAllowedPrivilegedPorts, err)
	}
	for name, env := range map[string]map[string]string{
		"not a list":     {"HYPEMAN_INGRESS_ALLOWED_PRIVILEGED_PORTS": "80,http"},
		"not privileged": {"HYPEMAN_INGRESS_ALLOWED_PRIVILEGED_PORTS": "8080"},
		"zero":           {"HYPEMAN_INGRESS_ALLOWED_PRIVILEGED_PORTS": "0"},
		"listen name":    {"HYPEMAN_INGRESS_LISTEN": "localhost"},
	} {
		if _, err := Load("", func(k string) string { return env[k] }, nil); err == nil {
			t.Errorf("%s: want error", name)
		}
	}
}

func TestSnapshotCompressionSetting(t *testing.T) {
	for _, tc := range []struct {
		set  map[string]string
		want string // Compression.String(), or "error: <substring>"
	}{
		{nil, "none"},
		{map[string]string{"compress_snapshots": "true"}, "zstd:1"},
		{map[string]string{"snapshot_compression": "lz4"}, "lz4:0"},
		{map[string]string{"snapshot_compression": "zstd:19"}, "zstd:19"},
		{map[string]string{"snapshot_compression": "zstd:1", "compress_snapshots": "true"}, "zstd:1"},
		{map[string]string{"snapshot_compression": "none", "compress_snapshots": "true"}, "error: set only snapshot_compression"},
		{map[string]string{"snapshot_compression": "zstd:25"}, "error: zstd levels are 1-19"},
		{map[string]string{"snapshot_compression": "gzip"}, "error: want none, zstd[:1-19] or lz4[:0-9]"},
	} {
		c, err := Load("", nil, tc.set)
		if want, isErr := strings.CutPrefix(tc.want, "error: "); isErr {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%v: err %v, want one mentioning %q", tc.set, err, want)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", tc.set, err)
			continue
		}
		if got, err := c.ResolvedSnapshotCompression(); err != nil || got.String() != tc.want {
			t.Errorf("%v: %s %v, want %s", tc.set, got, err, tc.want)
		}
	}
}
