package hypervisor

import (
	"errors"
	"strings"
	"testing"
)

func TestCompressionValidate(t *testing.T) {
	for _, c := range []Compression{{}, {Algorithm: "zstd", Level: 1}, {Algorithm: "zstd", Level: 19},
		{Algorithm: "lz4", Level: 0}, {Algorithm: "lz4", Level: 9}, {Level: 42} /* level ignored when off */} {
		if err := c.Validate(); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
	for _, tc := range []struct {
		c     Compression
		field string
		msg   string
	}{
		{Compression{Algorithm: "zstd", Level: 0}, "compression.level", "zstd levels are 1-19"},
		{Compression{Algorithm: "zstd", Level: 20}, "compression.level", "zstd levels are 1-19"},
		{Compression{Algorithm: "lz4", Level: -1}, "compression.level", "lz4 levels are 0-9"},
		{Compression{Algorithm: "lz4", Level: 10}, "compression.level", "lz4 levels are 0-9"},
		{Compression{Algorithm: "gzip", Level: 1}, "compression.algorithm", `"gzip" is not one of zstd, lz4`},
		{Compression{Algorithm: "ZSTD", Level: 1}, "compression.algorithm", "not one of"},
	} {
		err := tc.c.Validate()
		var ce *CompressionError
		if !errors.As(err, &ce) || ce.Field != tc.field || !strings.Contains(err.Error(), tc.msg) || !errors.Is(err, ErrInvalidCompression) {
			t.Errorf("%+v: %v, want %s mentioning %q", tc.c, err, tc.field, tc.msg)
		}
	}
}

func TestNewCompression(t *testing.T) {
	lvl := func(n int) *int { return &n }
	for _, tc := range []struct {
		enabled bool
		alg     string
		level   *int
		want    Compression
		bad     string // field of the expected error
	}{
		{enabled: false, alg: "gzip", level: lvl(99), want: Compression{}}, // disabled ignores the rest
		{enabled: true, want: Compression{Algorithm: "zstd", Level: 1}},
		{enabled: true, alg: "lz4", want: Compression{Algorithm: "lz4", Level: 0}},
		{enabled: true, alg: "zstd", level: lvl(19), want: Compression{Algorithm: "zstd", Level: 19}},
		{enabled: true, alg: "lz4", level: lvl(9), want: Compression{Algorithm: "lz4", Level: 9}},
		{enabled: true, alg: "zstd", level: lvl(0), bad: "compression.level"},
		{enabled: true, alg: "lz4", level: lvl(19), bad: "compression.level"},
		{enabled: true, alg: "brotli", bad: "compression.algorithm"},
	} {
		got, err := NewCompression(tc.enabled, tc.alg, tc.level)
		var ce *CompressionError
		switch {
		case tc.bad != "" && (!errors.As(err, &ce) || ce.Field != tc.bad):
			t.Errorf("%+v: err %v, want one on %s", tc, err, tc.bad)
		case tc.bad == "" && (err != nil || got != tc.want):
			t.Errorf("%+v: %+v %v, want %+v", tc, got, err, tc.want)
		}
	}
}

func TestParseCompressionRoundTrip(t *testing.T) {
	for in, want := range map[string]Compression{
		"": {}, "none": {}, " zstd ": {Algorithm: "zstd", Level: 1}, "zstd:19": {Algorithm: "zstd", Level: 19},
		"lz4": {Algorithm: "lz4"}, "lz4:7": {Algorithm: "lz4", Level: 7},
	} {
		got, err := ParseCompression(in)
		if err != nil || got != want {
			t.Errorf("%q: %+v %v", in, got, err)
		}
		if back, err := ParseCompression(got.String()); err != nil || back != got {
			t.Errorf("%q: String %q does not parse back: %+v %v", in, got.String(), back, err)
		}
	}
	for _, in := range []string{"zstd:", "zstd:x", "zstd:0", "lz4:10", ":3", "gzip", "zstd:1:2"} {
		if c, err := ParseCompression(in); !errors.Is(err, ErrInvalidCompression) {
			t.Errorf("%q accepted: %+v %v", in, c, err)
		}
	}
}
