package sizes

import "testing"

func TestParseAndFormat(t *testing.T) {
	for in, want := range map[string]int64{"16KB": 16 << 10, "1.5GiB": 3 << 29, "4096": 4096, " 2 tb ": 2 << 40, "0": 0} {
		if got, err := Parse(in); err != nil || got != want {
			t.Errorf("Parse(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "KB", "-1KB", "1e3KB", "NaN", "99999999999TB", "1 XB"} {
		if _, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) accepted", in)
		}
	}
	for n, want := range map[int64]string{16 << 30: "16GB", 1536 << 20: "1536MB", 100: "100B", 0: "0B"} {
		if got := Format(n); got != want {
			t.Errorf("Format(%d) = %q, want %q", n, got, want)
		}
	}
}
