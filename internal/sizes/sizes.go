// Package sizes parses and prints byte sizes the way hypeman writes them:
// "512MB", "1GB", "1.5GiB", "4096", binary units (1GB = 1024^3).
//
// Why a package: instance sizes in API requests and the daemon's own limits
// in its configuration (upload caps, image caps, body rates) must read the
// same way, and the configuration cannot depend on the instance manager.
package sizes

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

var units = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}

// Parse parses "1GB", "512MB", "2G", "1.5GiB" or a byte count. Units are
// binary (1GB = 1024^3), matching hypeman.
func Parse(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	if t == "" {
		return 0, fmt.Errorf("empty size")
	}
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	mult, ok := units[unit]
	if !ok || num == "" {
		return 0, fmt.Errorf("%q is not a size (examples: 512MB, 1GB, 2GiB)", s)
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, fmt.Errorf("%q is not a size (examples: 512MB, 1GB, 2GiB)", s)
	}
	v := f * float64(mult)
	if v >= math.MaxInt64/2 {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return int64(v), nil
}

// Format renders bytes with the largest exact binary unit ("1GB",
// "1536MB", "100B").
func Format(n int64) string {
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
