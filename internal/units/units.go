// Package units parses and formats the human quantities the API takes as
// strings: sizes ("1GB", "512MB") and data rates ("100MB/s", "1Gbps").
//
// Why a package: memory, hotplug memory and disk sizes, the disk I/O limit
// and the network bandwidth limits all arrive as such strings, and the byte
// units of a size must mean the same thing inside a rate ("100MB/s" is
// 100 x the "1MB" of a size). One place derives each of these facts; the
// instance manager only chooses ranges and field names.
//
// The rules, matching hypeman's:
//   - Sizes use binary units: KB/K/KiB = 1024, MB = 1024², GB = 1024³,
//     TB = 1024⁴ (case-insensitive; a bare number is bytes).
//   - A byte rate is a size followed by "/s": "100MB/s" = 100 x 1024² bytes/s.
//   - A bit rate ends in "bps" or "bit/s" and uses decimal prefixes, as
//     networking does: k = 1000, M = 1000², G = 1000³, T = 1000⁴ bits/s;
//     "1Gbps" = 125,000,000 bytes/s. Bit rates are converted to whole bytes
//     per second (rounded down).
//   - "Bps" with a capital B ("100MBps") is refused as ambiguous: write
//     "100MB/s" for bytes or "100Mbps" for bits.
package units

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}

// bitPrefixes are the decimal multipliers of bit rates.
var bitPrefixes = map[string]int64{"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}

// limit keeps parsed values far from int64 overflow (callers multiply and
// add them).
const limit = math.MaxInt64 / 2

// ParseSize parses "1GB", "512MB", "2G", "1.5GiB" or a byte count. Units are
// binary (1GB = 1024^3), matching hypeman.
func ParseSize(s string) (int64, error) {
	num, unit := splitNumber(strings.ToLower(strings.TrimSpace(s)))
	mult, ok := sizeUnits[unit]
	if !ok || num == "" {
		if strings.TrimSpace(s) == "" {
			return 0, fmt.Errorf("empty size")
		}
		return 0, fmt.Errorf("%q is not a size (examples: 512MB, 1GB, 2GiB)", s)
	}
	v, err := scale(num, mult)
	if err != nil {
		return 0, fmt.Errorf("%q is %w (examples: 512MB, 1GB, 2GiB)", s, err)
	}
	return v, nil
}

// FormatSize renders bytes with the largest exact binary unit ("1GB",
// "1536MB", "100B").
func FormatSize(n int64) string {
	for _, u := range []struct {
		s string
		m int64
	}{{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10}} {
		if n >= u.m && n%u.m == 0 {
			return fmt.Sprintf("%d%s", n/u.m, u.s)
		}
	}
	return fmt.Sprintf("%dB", n)
}

// Rate is a data rate. Bits records that it was written as a bit rate, so
// String gives it back in the same family.
type Rate struct {
	BytesPerSec int64
	Bits        bool
}

// RateFormats describes what ParseRate accepts (for error messages).
const RateFormats = "a bit rate like 500Mbps or 1Gbps (k/M/G = 1000^n bits/s) or a byte rate like 100MB/s (KB/MB/GB = 1024^n bytes/s)"

// ParseRate parses a data rate (see the package doc for the rules). "0",
// with or without a unit, is the zero Rate.
func ParseRate(s string) (Rate, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return Rate{}, fmt.Errorf("empty rate")
	}
	if n, err := strconv.ParseFloat(t, 64); err == nil && n == 0 {
		return Rate{}, nil
	}
	lower := strings.ToLower(t)
	switch {
	case strings.HasSuffix(lower, "/s") && !strings.HasSuffix(lower, "bit/s"):
		n, err := ParseSize(t[:len(t)-2])
		if err != nil {
			return Rate{}, fmt.Errorf("%q is not a rate: want %s", s, RateFormats)
		}
		return Rate{BytesPerSec: n}, nil
	case strings.HasSuffix(lower, "bps") || strings.HasSuffix(lower, "bit/s"):
		var body string
		if strings.HasSuffix(lower, "bps") {
			body = t[:len(t)-3]
			if t[len(t)-3] == 'B' {
				return Rate{}, fmt.Errorf("%q is ambiguous: write %sB/s for bytes or %sbps for bits per second", s, body, body)
			}
		} else {
			body = t[:len(t)-len("bit/s")]
		}
		num, prefix := splitNumber(strings.ToLower(strings.TrimSpace(body)))
		mult, ok := bitPrefixes[prefix]
		if !ok || num == "" {
			return Rate{}, fmt.Errorf("%q is not a rate: want %s", s, RateFormats)
		}
		bits, err := scale(num, mult)
		if err != nil {
			return Rate{}, fmt.Errorf("%q is %w", s, err)
		}
		switch {
		case bits == 0:
			return Rate{}, nil
		case bits < 8:
			return Rate{}, fmt.Errorf("%q is below one byte per second", s)
		}
		return Rate{BytesPerSec: bits / 8, Bits: true}, nil
	}
	return Rate{}, fmt.Errorf("%q is not a rate: want %s", s, RateFormats)
}

// IsZero reports whether the rate is zero (no limit).
func (r Rate) IsZero() bool { return r.BytesPerSec == 0 }

// String renders the rate in its family with the largest exact unit:
// "1Gbps", "500Mbps", "100MB/s", "1536KB/s"; "0" for zero.
func (r Rate) String() string {
	if r.BytesPerSec == 0 {
		return "0"
	}
	if !r.Bits {
		return FormatSize(r.BytesPerSec) + "/s"
	}
	bits := r.BytesPerSec * 8
	for _, u := range []struct {
		s string
		m int64
	}{{"T", 1e12}, {"G", 1e9}, {"M", 1e6}, {"k", 1e3}} {
		if bits >= u.m && bits%u.m == 0 {
			return fmt.Sprintf("%d%sbps", bits/u.m, u.s)
		}
	}
	return fmt.Sprintf("%dbps", bits)
}

// splitNumber splits "12.5gb" into "12.5" and "gb" (unit trimmed).
func splitNumber(t string) (num, unit string) {
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	return t[:i], strings.TrimSpace(t[i:])
}

// scale returns num x mult, refusing negative, non-finite and huge values.
func scale(num string, mult int64) (int64, error) {
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, fmt.Errorf("not a number")
	}
	v := f * float64(mult)
	if v >= limit {
		return 0, fmt.Errorf("too large")
	}
	return int64(v), nil
}
