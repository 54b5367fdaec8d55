package durations

import (
	"testing"
	"time"
)

func TestFormatRoundTrips(t *testing.T) {
	cases := map[time.Duration]string{
		5 * time.Second: "5s", 5 * time.Minute: "5m", time.Hour: "1h", 90 * time.Second: "1m30s",
		time.Hour + time.Second: "1h0m1s", 1500 * time.Millisecond: "1.5s", 0: "0s",
	}
	for d, want := range cases {
		got := Format(d)
		if got != want {
			t.Errorf("Format(%v) = %q, want %q", d, got, want)
		}
		if back, err := time.ParseDuration(got); err != nil || back != d {
			t.Errorf("%q does not parse back to %v: %v %v", got, d, back, err)
		}
	}
}
