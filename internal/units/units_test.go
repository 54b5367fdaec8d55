package units

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	cases := map[string]int64{"1GB": 1 << 30, "512MB": 512 << 20, "2g": 2 << 30, "1.5GiB": 3 << 29, "4096": 4096, " 10 GB ": 10 << 30, "1TB": 1 << 40, "3GB": 3 << 30}
	for in, want := range cases {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("%q: got %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GB", "1XB", "-1GB", "1e9999GB", "abc", "1..2GB", "99999999999999999999TB"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("%q: want error", in)
		}
	}
	if FormatSize(1<<30) != "1GB" || FormatSize(1536<<20) != "1536MB" || FormatSize(100) != "100B" {
		t.Error("FormatSize")
	}
}

// The rule: bps/bit/s = bits with decimal prefixes, /s = bytes with the
// binary units of sizes.
func TestParseRate(t *testing.T) {
	cases := []struct {
		in    string
		bytes int64
		bits  bool
		shown string
	}{
		{"1Gbps", 125_000_000, true, "1Gbps"},
		{"500Mbps", 62_500_000, true, "500Mbps"},
		{"1.5Gbps", 187_500_000, true, "1500Mbps"},
		{"8kbps", 1000, true, "8kbps"},
		{"8Kbps", 1000, true, "8kbps"},
		{"10mbit/s", 1_250_000, true, "10Mbps"},
		{"800bps", 100, true, "800bps"},
		{"125MB/s", 125 << 20, false, "125MB/s"},
		{"100MB/s", 100 << 20, false, "100MB/s"},
		{"2mb/s", 2 << 20, false, "2MB/s"},
		{" 1.5 GB/s ", 1536 << 20, false, "1536MB/s"},
		{"4096/s", 4096, false, "4KB/s"},
		{"1000/s", 1000, false, "1000B/s"},
		{"0", 0, false, "0"},
		{"0MB/s", 0, false, "0"},
		{"0Gbps", 0, false, "0"},
	}
	for _, c := range cases {
		r, err := ParseRate(c.in)
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if r.BytesPerSec != c.bytes || (r.Bits != c.bits && c.bytes != 0) || r.String() != c.shown {
			t.Errorf("%q: got %d B/s bits=%v shown %q; want %d bits=%v %q", c.in, r.BytesPerSec, r.Bits, r.String(), c.bytes, c.bits, c.shown)
		}
		// The display form parses back to the same rate.
		if back, err := ParseRate(r.String()); err != nil || back != r {
			t.Errorf("%q: display %q parses to %+v, %v", c.in, r.String(), back, err)
		}
	}
	for _, in := range []string{"", "fast", "100", "100MB", "-1Mbps", "1e999Gbps", "1Xbps", "Mbps", "/s", "1MB/h", "99999999999999999999TB/s", "1bps"} {
		if _, err := ParseRate(in); err == nil {
			t.Errorf("%q: want error", in)
		}
	}
	_, err := ParseRate("100MBps")
	if err == nil || !strings.Contains(err.Error(), "100MB/s") || !strings.Contains(err.Error(), "100Mbps") {
		t.Errorf("capital-B Bps must be refused naming both readings, got %v", err)
	}
}

func FuzzParseRate(f *testing.F) {
	for _, s := range []string{"1Gbps", "125MB/s", "0", "100MBps", "1.5kbit/s", "/s", "bps"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRate(s)
		if err != nil {
			return
		}
		if r.BytesPerSec < 0 || r.BytesPerSec >= limit {
			t.Fatalf("%q: out of range %d", s, r.BytesPerSec)
		}
		back, err := ParseRate(r.String())
		if err != nil || back.BytesPerSec != r.BytesPerSec {
			t.Fatalf("%q: %q does not parse back: %+v %v", s, r.String(), back, err)
		}
	})
}

func TestParseAndFormatSizes(t *testing.T) {
	for in, want := range map[string]int64{"16KB": 16 << 10, "1.5GiB": 3 << 29, "4096": 4096, " 2 tb ": 2 << 40, "0": 0} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "KB", "-1KB", "1e3KB", "NaN", "99999999999TB", "1 XB"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
	for n, want := range map[int64]string{16 << 30: "16GB", 1536 << 20: "1536MB", 100: "100B", 0: "0B"} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
	}
}
