package guestconfig

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestCheckMountPath(t *testing.T) {
	for _, ok := range []string{"/data", "/var/lib/db", "/run/x", "/devices", "/proc2", "/mnt/a-b_c.d"} {
		assert.Empty(t, CheckMountPath(ok), ok)
	}
	for p, want := range map[string]string{
		"":            "is required",
		"data":        "absolute",
		"/":           "must not be /",
		"/data/":      "clean path",
		"/a/../b":     "clean path",
		"/a/./b":      "clean path",
		"//a":         "clean path",
		"/proc":       "reserved",
		"/proc/x":     "reserved",
		"/sys/fs":     "reserved",
		"/dev":        "reserved",
		"/a\x00b":     "NUL",
		"/data/../..": "clean path",
	} {
		assert.Contains(t, CheckMountPath(p), want, "%q", p)
	}
}

func TestVolumeSerialsFitVirtio(t *testing.T) {
	assert.Equal(t, "hm-vol0", VolumeSerial(0))
	assert.Equal(t, "hm-vol17-ov", VolumeOverlaySerial(17))
	assert.LessOrEqual(t, len(VolumeOverlaySerial(999_999_999)), 20)
}
