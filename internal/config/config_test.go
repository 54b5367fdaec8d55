package config

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
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
