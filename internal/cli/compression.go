package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/pflag"

	"hypeman/internal/api/client"
)

// Compression flags of saved memory state, under hypeman's CLI names: run
// sets the instance's snapshot policy (--snapshot-compression-…), standby
// and snapshot create override it once (--compression-…).
//
// As in hypeman's CLI, --…-algorithm or --…-level alone turn compression
// on. --…-enabled=false turns it off and refuses the other two, which the
// server would ignore. The algorithm and the delay's syntax are checked
// here; level ranges (zstd 1-19, lz4 0-9) are the server's to check, and
// its 400 names the field.

// compressionFlags are one command's compression flags.
type compressionFlags struct {
	prefix string // "compression-" or "snapshot-compression-"
	// delayUsage registers --…-delay with this help text ("" = no flag).
	delayUsage string
	// policy: the flags set an instance's defaults, where a delay stays
	// meaningful without compression (a later standby may turn it on).
	policy bool
	// fallback names what applies without these flags, for the help.
	fallback string

	enabled          bool
	algorithm, delay string
	level            int
}

func (c *compressionFlags) flag(name string) string { return c.prefix + name }

func (c *compressionFlags) register(fl *pflag.FlagSet) {
	on := "; implies --" + c.flag("enabled")
	fl.BoolVar(&c.enabled, c.flag("enabled"), false, "compress saved memory (=false: store it uncompressed; default: "+c.fallback+")")
	fl.StringVar(&c.algorithm, c.flag("algorithm"), "", "compression `ALGORITHM`: zstd (the default) or lz4"+on)
	fl.IntVar(&c.level, c.flag("level"), 0, "compression `LEVEL`: zstd 1-19 (default 1), lz4 0-9 (default 0)"+on)
	if c.delayUsage != "" {
		fl.StringVar(&c.delay, c.flag("delay"), "", c.delayUsage)
	}
}

// given is the first compression flag given ("" when none).
func (c *compressionFlags) given(fl *pflag.FlagSet) string {
	for _, n := range []string{c.flag("enabled"), c.flag("algorithm"), c.flag("level"), c.flag("delay")} {
		if fl.Changed(n) {
			return n
		}
	}
	return ""
}

// build returns the compression to send (nil when no compression flag was
// given) and the delay (nil when --…-delay was not given).
func (c *compressionFlags) build(fl *pflag.FlagSet) (*client.SnapshotCompressionConfig, *string, error) {
	var delay *string
	if c.delayUsage != "" {
		var err error
		if delay, err = durationFlag(fl, c.flag("delay"), c.delay); err != nil {
			return nil, nil, err
		}
	}
	if !fl.Changed(c.flag("enabled")) && !fl.Changed(c.flag("algorithm")) && !fl.Changed(c.flag("level")) {
		return nil, delay, nil
	}
	if fl.Changed(c.flag("enabled")) && !c.enabled {
		others := []string{c.flag("algorithm"), c.flag("level")}
		if !c.policy {
			others = append(others, c.flag("delay"))
		}
		for _, n := range others {
			if fl.Changed(n) {
				return nil, nil, fmt.Errorf("--%s has no effect with --%s=false", n, c.flag("enabled"))
			}
		}
		return &client.SnapshotCompressionConfig{Enabled: false}, delay, nil
	}
	out := &client.SnapshotCompressionConfig{Enabled: true}
	if fl.Changed(c.flag("algorithm")) {
		switch a := client.SnapshotCompressionConfigAlgorithm(strings.ToLower(strings.TrimSpace(c.algorithm))); a {
		case client.Zstd, client.Lz4:
			out.Algorithm = &a
		default:
			return nil, nil, fmt.Errorf("invalid --%s %q: use zstd or lz4", c.flag("algorithm"), c.algorithm)
		}
	}
	if fl.Changed(c.flag("level")) {
		out.Level = ptr(c.level)
	}
	return out, delay, nil
}
