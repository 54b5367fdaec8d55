package qemu

import (
	"context"
	"errors"
	"strings"
	"testing"

	"hypeman/internal/testutil/tier"
)

func TestParseKernelLogTSC(t *testing.T) {
	cases := []struct {
		name string
		log  string
		khz  int
		what string
		ok   bool
	}{
		{"detected", "[    0.000023] tsc: Detected 2499.998 MHz processor\n", 2499998, "detected", true},
		{"kmsg form", "tsc: Detected 3000.000 MHz processor\nclocksource: tsc: mask\n", 3000000, "detected", true},
		{"refined wins", "tsc: Detected 2399.950 MHz processor\n...\ntsc: Refined TSC clocksource calibration: 2400.012 MHz\n", 2400012, "refined calibration", true},
		{"detected TSC", "tsc: Detected 2100.000 MHz TSC\n", 2100000, "detected", true},
		{"integer MHz", "tsc: Detected 2500 MHz processor", 2500000, "detected", true},
		{"one decimal", "tsc: Refined TSC clocksource calibration: 2592.1 MHz", 2592100, "refined calibration", true},
		{"none", "clocksource: Switched to clocksource tsc\n", 0, "", false},
		{"garbage rate", "tsc: Detected 0.001 MHz processor", 0, "", false},
	}
	for _, c := range cases {
		k, what, ok := ParseKernelLogTSC(c.log)
		if k != c.khz || what != c.what || ok != c.ok {
			t.Errorf("%s: got %d %q %v, want %d %q %v", c.name, k, what, ok, c.khz, c.what, c.ok)
		}
	}
}

type fakeTSC struct {
	sysfs      int
	sysfsErr   error
	log        string
	logErr     error
	measured   int
	measureErr error
	calls      []string
}

func (f *fakeTSC) SysfsTSCKHz() (int, error) {
	f.calls = append(f.calls, "sysfs")
	return f.sysfs, f.sysfsErr
}
func (f *fakeTSC) KernelLog(context.Context) (string, error) {
	f.calls = append(f.calls, "log")
	return f.log, f.logErr
}
func (f *fakeTSC) MeasureTSCKHz(context.Context) (int, error) {
	f.calls = append(f.calls, "measure")
	return f.measured, f.measureErr
}

func TestDetectTSCKHzOrder(t *testing.T) {
	noSys := errors.New("no such file")
	ctx := context.Background()

	f := &fakeTSC{sysfs: 2000000, log: "tsc: Detected 2499.998 MHz processor", measured: 2499990}
	if k, src, err := DetectTSCKHz(ctx, f); err != nil || k != 2000000 || !strings.Contains(src, "sysfs") || len(f.calls) != 1 {
		t.Fatalf("sysfs first: %d %q %v calls %v", k, src, err, f.calls)
	}
	f = &fakeTSC{sysfsErr: noSys, log: "tsc: Detected 2499.998 MHz processor", measured: 2499990}
	if k, src, err := DetectTSCKHz(ctx, f); err != nil || k != 2499998 || !strings.Contains(src, "kernel log") || strings.Join(f.calls, ",") != "sysfs,log" {
		t.Fatalf("log second: %d %q %v calls %v", k, src, err, f.calls)
	}
	f = &fakeTSC{sysfsErr: noSys, log: "rotated away", measured: 2499990}
	if k, src, err := DetectTSCKHz(ctx, f); err != nil || k != 2499990 || !strings.Contains(src, "measured") {
		t.Fatalf("measure last: %d %q %v", k, src, err)
	}
	f = &fakeTSC{sysfsErr: noSys, logErr: errors.New("EPERM"), measureErr: errors.New("not amd64")}
	_, _, err := DetectTSCKHz(ctx, f)
	if err == nil || !strings.Contains(err.Error(), "EPERM") || !strings.Contains(err.Error(), "not amd64") {
		t.Fatalf("all fail: %v", err)
	}
	f = &fakeTSC{sysfs: 5, logErr: errors.New("x"), measured: 1}
	if _, _, err := DetectTSCKHz(ctx, f); err == nil {
		t.Fatal("implausible values accepted")
	}
}

// TestHostTSCMeasurementAgreesWithKernel measures the TSC on this host and,
// when the kernel log still has its calibration, requires agreement within
// 0.5% (a wrong value skews the guest clock by the same ratio).
func TestHostTSCMeasurementAgreesWithKernel(t *testing.T) {
	ctx := context.Background()
	m, err := Host{}.MeasureTSCKHz(ctx)
	if err != nil {
		t.Fatalf("measure: %v", err)
	}
	if !plausibleKHz(m) {
		t.Fatalf("measured %d kHz", m)
	}
	log, err := Host{}.KernelLog(ctx)
	if err != nil {
		tier.Missing(t, "kernel log unreadable (run as root): %v", err)
	}
	k, what, ok := ParseKernelLogTSC(log)
	if !ok {
		t.Logf("kernel log has no TSC line (rotated); measured %d kHz", m)
		return
	}
	diff := float64(m-k) / float64(k)
	t.Logf("measured %d kHz, kernel %s %d kHz, diff %.4f%%", m, what, k, diff*100)
	if diff > 0.005 || diff < -0.005 {
		t.Fatalf("measured %d kHz vs kernel %d kHz", m, k)
	}
}
