package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"hypeman/internal/childproc"
)

// TSCSource is where the host TSC rate can be found. Tests fake it.
type TSCSource interface {
	// SysfsTSCKHz reads /sys/devices/system/cpu/cpu0/tsc_freq_khz (absent
	// on most kernels).
	SysfsTSCKHz() (int, error)
	// KernelLog returns the kernel ring buffer text (/dev/kmsg, or dmesg).
	KernelLog(ctx context.Context) (string, error)
	// MeasureTSCKHz counts TSC ticks against CLOCK_MONOTONIC_RAW.
	MeasureTSCKHz(ctx context.Context) (int, error)
}

// DetectTSCKHz finds the host TSC rate in kHz, trying the cheapest and most
// exact source first: sysfs, then the kernel's own calibration in its log
// (the refined value beats the early "Detected" one), then measuring. The
// second result names the source.
//
// Why it matters: QEMU's microvm has neither HPET nor PM timer, so a guest
// kernel under TCG cannot calibrate its TSC and often hangs; we pass
// tsc_early_khz=. Under TCG the guest reads the host TSC directly, so the
// value must be the host's rate: a wrong one skews the guest clock.
func DetectTSCKHz(ctx context.Context, src TSCSource) (int, string, error) {
	var errs []error
	if k, err := src.SysfsTSCKHz(); err == nil && plausibleKHz(k) {
		return k, "sysfs tsc_freq_khz", nil
	} else if err != nil {
		errs = append(errs, fmt.Errorf("sysfs: %w", err))
	}
	if log, err := src.KernelLog(ctx); err == nil {
		if k, what, ok := ParseKernelLogTSC(log); ok {
			return k, "kernel log (" + what + ")", nil
		}
		errs = append(errs, errors.New("kernel log: no TSC line"))
	} else {
		errs = append(errs, fmt.Errorf("kernel log: %w", err))
	}
	k, err := src.MeasureTSCKHz(ctx)
	if err == nil && plausibleKHz(k) {
		return k, "measured (RDTSC vs CLOCK_MONOTONIC_RAW)", nil
	}
	if err == nil {
		err = fmt.Errorf("implausible rate %d kHz", k)
	}
	errs = append(errs, fmt.Errorf("measure: %w", err))
	return 0, "", fmt.Errorf("host TSC rate unknown: %w", errors.Join(errs...))
}

// plausibleKHz rejects garbage: TSCs run between 100 MHz and 10 GHz.
func plausibleKHz(k int) bool { return k >= 100_000 && k <= 10_000_000 }

var (
	refinedRe  = regexp.MustCompile(`tsc: Refined TSC clocksource calibration: ([0-9]+(?:\.[0-9]+)?) MHz`)
	detectedRe = regexp.MustCompile(`tsc: Detected ([0-9]+(?:\.[0-9]+)?) MHz (?:processor|TSC)`)
)

// ParseKernelLogTSC extracts the TSC rate from kernel log text. The last
// "Refined TSC clocksource calibration" wins, else the last "Detected X MHz
// processor" (or "Detected X MHz TSC"). It returns kHz and which line matched.
func ParseKernelLogTSC(log string) (khz int, what string, ok bool) {
	for _, c := range []struct {
		re   *regexp.Regexp
		what string
	}{{refinedRe, "refined calibration"}, {detectedRe, "detected"}} {
		m := c.re.FindAllStringSubmatch(log, -1)
		if len(m) == 0 {
			continue
		}
		k, err := mhzToKHz(m[len(m)-1][1])
		if err == nil && plausibleKHz(k) {
			return k, c.what, true
		}
	}
	return 0, "", false
}

// mhzToKHz converts a decimal MHz string exactly ("2499.998" → 2499998).
func mhzToKHz(s string) (int, error) {
	whole, frac, _ := strings.Cut(s, ".")
	frac = (frac + "000")[:3]
	w, err := strconv.Atoi(whole)
	if err != nil {
		return 0, err
	}
	f, err := strconv.Atoi(frac)
	if err != nil {
		return 0, err
	}
	return w*1000 + f, nil
}

// SysfsTSCKHz implements TSCSource.
func (Host) SysfsTSCKHz() (int, error) {
	b, err := os.ReadFile("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// KernelLog implements TSCSource: /dev/kmsg read non-blocking to the end of
// the ring buffer; when that fails (no permission), `dmesg`.
func (Host) KernelLog(ctx context.Context) (string, error) {
	s, kerr := readKmsg()
	if kerr == nil {
		return s, nil
	}
	out, err := childproc.CommandContext(ctx, "dmesg").Output()
	if err != nil {
		return "", fmt.Errorf("/dev/kmsg: %w; dmesg: %w", kerr, err)
	}
	return string(out), nil
}

func readKmsg() (string, error) {
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	var out bytes.Buffer
	buf := make([]byte, 8192) // one record per read
	for {
		n, err := unix.Read(fd, buf)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return out.String(), nil
		case errors.Is(err, unix.EPIPE):
			continue // record overwritten while reading; skip it
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return "", err
		case n == 0:
			return out.String(), nil
		}
		// "pri,seq,usec,flags;message\n"
		rec := buf[:n]
		if i := bytes.IndexByte(rec, ';'); i >= 0 {
			rec = rec[i+1:]
		}
		if i := bytes.IndexByte(rec, '\n'); i >= 0 {
			rec = rec[:i+1]
		}
		out.Write(rec)
	}
}

// MeasureTSCKHz implements TSCSource: counts TSC ticks over ~150 ms of
// CLOCK_MONOTONIC_RAW (not NTP-slewed). Each endpoint reads the clock on both
// sides of RDTSC and keeps the tightest bracket of a few tries.
func (Host) MeasureTSCKHz(ctx context.Context) (int, error) {
	if !haveRDTSC {
		return 0, errors.New("RDTSC is only available on amd64")
	}
	sample := func() (ns int64, tsc uint64, err error) {
		best := int64(1 << 62)
		for range 5 {
			var a, b unix.Timespec
			if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_RAW, &a); err != nil {
				return 0, 0, err
			}
			t := rdtsc()
			if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_RAW, &b); err != nil {
				return 0, 0, err
			}
			if w := b.Nano() - a.Nano(); w < best {
				best, ns, tsc = w, (a.Nano()+b.Nano())/2, t
			}
		}
		return ns, tsc, nil
	}
	ns0, t0, err := sample()
	if err != nil {
		return 0, err
	}
	select {
	case <-time.After(150 * time.Millisecond):
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	ns1, t1, err := sample()
	if err != nil {
		return 0, err
	}
	if ns1 <= ns0 || t1 <= t0 {
		return 0, errors.New("TSC or clock did not advance")
	}
	// kHz = ticks / ms, rounded.
	return int((float64(t1-t0)/float64(ns1-ns0))*1e6 + 0.5), nil
}
