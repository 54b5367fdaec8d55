package hypervisor

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Compression algorithms for saved VM state (Compression.Algorithm).
const (
	CompressionNone = ""
	CompressionZstd = "zstd"
	CompressionLZ4  = "lz4"
)

// Level ranges and defaults per algorithm (hypeman API 0.3.0: zstd 1-19,
// default 1; lz4 0-9, default 0 = the fast mode).
const (
	ZstdMinLevel     = 1
	ZstdMaxLevel     = 19
	ZstdDefaultLevel = 1
	LZ4MinLevel      = 0
	LZ4MaxLevel      = 9
	LZ4DefaultLevel  = 0
)

// Compression says how a saved VM state is stored. The zero value means
// uncompressed. Drivers map levels to their codecs and document how.
type Compression struct {
	// Algorithm is CompressionNone (""), CompressionZstd or CompressionLZ4.
	Algorithm string `json:"algorithm,omitempty"`
	// Level is the algorithm's level (see the ranges above); ignored when
	// Algorithm is "".
	Level int `json:"level,omitempty"`
}

// Enabled reports whether the state is compressed.
func (c Compression) Enabled() bool { return c.Algorithm != CompressionNone }

// String is "none", "zstd:LEVEL" or "lz4:LEVEL" (the form ParseCompression
// reads).
func (c Compression) String() string {
	if !c.Enabled() {
		return "none"
	}
	return c.Algorithm + ":" + strconv.Itoa(c.Level)
}

// ErrInvalidCompression is wrapped by every *CompressionError.
var ErrInvalidCompression = errors.New("invalid compression")

// CompressionError is a bad compression setting. Field is
// "compression.algorithm" or "compression.level"; callers that nest the
// setting deeper prefix it (e.g. "snapshot_policy.").
type CompressionError struct {
	Field  string
	Reason string
}

func (e *CompressionError) Error() string { return "invalid " + e.Field + ": " + e.Reason }
func (e *CompressionError) Unwrap() error { return ErrInvalidCompression }

// Validate checks the algorithm and its level range.
func (c Compression) Validate() error {
	lo, hi := 0, 0
	switch c.Algorithm {
	case CompressionNone:
		return nil
	case CompressionZstd:
		lo, hi = ZstdMinLevel, ZstdMaxLevel
	case CompressionLZ4:
		lo, hi = LZ4MinLevel, LZ4MaxLevel
	default:
		return &CompressionError{Field: "compression.algorithm",
			Reason: fmt.Sprintf("%q is not one of zstd, lz4 (or disable compression)", c.Algorithm)}
	}
	if c.Level < lo || c.Level > hi {
		return &CompressionError{Field: "compression.level",
			Reason: fmt.Sprintf("%d is out of range: %s levels are %d-%d", c.Level, c.Algorithm, lo, hi)}
	}
	return nil
}

// DefaultLevel is the level used when a request names an algorithm but no
// level; 0 for an unknown algorithm.
func DefaultLevel(algorithm string) int {
	if algorithm == CompressionZstd {
		return ZstdDefaultLevel
	}
	return LZ4DefaultLevel
}

// NewCompression builds a validated Compression from the API's shape
// (SnapshotCompressionConfig): enabled=false means none whatever else is
// set; algorithm "" means zstd; a nil level means the algorithm's default.
func NewCompression(enabled bool, algorithm string, level *int) (Compression, error) {
	if !enabled {
		return Compression{}, nil
	}
	if algorithm == "" {
		algorithm = CompressionZstd
	}
	c := Compression{Algorithm: algorithm, Level: DefaultLevel(algorithm)}
	if level != nil {
		c.Level = *level
	}
	return c, c.Validate()
}

// ParseCompression reads the String form: "none" (or ""), "zstd", "lz4",
// "zstd:LEVEL", "lz4:LEVEL". Used for configuration settings.
func ParseCompression(s string) (Compression, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "none" {
		return Compression{}, nil
	}
	alg, lvl, hasLevel := strings.Cut(s, ":")
	if alg == "" {
		return Compression{}, &CompressionError{Field: "compression.algorithm", Reason: fmt.Sprintf("%q: want none, zstd[:LEVEL] or lz4[:LEVEL]", s)}
	}
	var level *int
	if hasLevel {
		n, err := strconv.Atoi(lvl)
		if err != nil {
			return Compression{}, &CompressionError{Field: "compression.level", Reason: fmt.Sprintf("%q is not an integer", lvl)}
		}
		level = &n
	}
	return NewCompression(true, alg, level)
}
