package config

import (
	"flag"
	"os"
	"path/filepath"
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
