// Package durations formats Go durations for people and JSON.
//
// Why a package: restart policies and health checks both write durations
// into API JSON and error messages, and must agree on one short form that
// parses back with time.ParseDuration.
package durations

import (
	"strings"
	"time"
)

// Format is time.Duration.String without trailing zero units ("30s", "5m",
// "1h" instead of "5m0s", "1h0m0s"); the result parses back with
// time.ParseDuration.
func Format(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
