package qemu

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"testing"

	"hypeman/internal/hypervisor"
)

type fakeProbe struct {
	version int
	err     error
	modules map[string]bool
}

func (f fakeProbe) KVMAPIVersion() (int, error)   { return f.version, f.err }
func (f fakeProbe) ModuleLoaded(name string) bool { return f.modules[name] }

func TestDetectAccel(t *testing.T) {
	working := fakeProbe{version: 12}
	missing := fakeProbe{err: &fs.PathError{Op: "open", Path: "/dev/kvm", Err: fs.ErrNotExist}}
	denied := fakeProbe{err: &fs.PathError{Op: "open", Path: "/dev/kvm", Err: fs.ErrPermission}}
	oddAPI := fakeProbe{version: 11}
	pvm := fakeProbe{version: 12, modules: map[string]bool{"kvm_pvm": true}}
	pvmNoDev := fakeProbe{err: missing.err, modules: map[string]bool{"kvm_pvm": true}}

	cases := []struct {
		name       string
		mode       hypervisor.Accelerator
		probe      fakeProbe
		want       hypervisor.Accelerator
		reason     string
		wantErr    error
		errContain string
	}{
		{"auto works", hypervisor.AccelAuto, working, hypervisor.AccelKVM, "API version 12", nil, ""},
		{"empty means auto", "", working, hypervisor.AccelKVM, "API version 12", nil, ""},
		{"auto missing", hypervisor.AccelAuto, missing, hypervisor.AccelTCG, "/dev/kvm missing, using TCG", nil, ""},
		{"auto denied", hypervisor.AccelAuto, denied, hypervisor.AccelTCG, "permission denied", nil, ""},
		{"auto api", hypervisor.AccelAuto, oddAPI, hypervisor.AccelTCG, "API version 11", nil, ""},
		{"auto pvm", hypervisor.AccelAuto, pvm, hypervisor.AccelTCG, ReasonKVMPVM, nil, ""},
		{"auto pvm without device", hypervisor.AccelAuto, pvmNoDev, hypervisor.AccelTCG, ReasonKVMPVM, nil, ""},
		{"tcg forced", hypervisor.AccelTCG, working, hypervisor.AccelTCG, "forced", nil, ""},
		{"kvm forced works", hypervisor.AccelKVM, working, hypervisor.AccelKVM, "forced", nil, ""},
		{"kvm forced pvm warns", hypervisor.AccelKVM, pvm, hypervisor.AccelKVM, "kvm_pvm", nil, ""},
		{"kvm forced missing", hypervisor.AccelKVM, missing, "", "", ErrKVMUnusable, "/dev/kvm missing"},
		{"kvm forced api", hypervisor.AccelKVM, oddAPI, "", "", ErrKVMUnusable, "API version 11"},
		{"bogus mode", "hvf", working, "", "", nil, "unknown accelerator"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := DetectAccel(c.mode, c.probe)
			if c.wantErr != nil || c.errContain != "" {
				if err == nil || (c.wantErr != nil && !errors.Is(err, c.wantErr)) || !strings.Contains(err.Error(), c.errContain) {
					t.Fatalf("err = %v, want %v containing %q", err, c.wantErr, c.errContain)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Accel != c.want || !strings.Contains(got.Reason, c.reason) {
				t.Fatalf("got %+v, want %s with reason containing %q", got, c.want, c.reason)
			}
		})
	}
}

// TestHostProbeMatchesThisHost checks the real probe against the facts of
// the machine the test runs on (whatever they are).
func TestHostProbeMatchesThisHost(t *testing.T) {
	_, statErr := os.Stat("/dev/kvm")
	v, err := Host{}.KVMAPIVersion()
	switch {
	case errors.Is(statErr, fs.ErrNotExist):
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("/dev/kvm absent but probe says %d, %v", v, err)
		}
	case err == nil && v != 12:
		t.Fatalf("KVM API version %d", v)
	}
	_, modErr := os.Stat("/sys/module/kvm_pvm")
	if got := (Host{}).ModuleLoaded("kvm_pvm"); got != (modErr == nil) {
		t.Fatalf("ModuleLoaded(kvm_pvm) = %v, /sys/module stat err %v", got, modErr)
	}
	if (Host{}).ModuleLoaded("surely_not_a_module_" + fmt.Sprint(os.Getpid())) {
		t.Fatal("nonexistent module reported loaded")
	}
	choice, err := DetectAccel(hypervisor.AccelAuto, Host{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("this host: %+v", choice)
	if modErr == nil && (choice.Accel != hypervisor.AccelTCG || choice.Reason != ReasonKVMPVM) {
		t.Fatalf("kvm_pvm host chose %+v", choice)
	}
}
