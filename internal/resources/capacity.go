package resources

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Kind names one resource (the API's ResourceStatus.type).
type Kind string

const (
	CPU     Kind = "cpu"
	Memory  Kind = "memory"
	Disk    Kind = "disk"
	Network Kind = "network"
	DiskIO  Kind = "disk_io"
)

// Kinds is every resource, in display order.
var Kinds = []Kind{CPU, Memory, Disk, Network, DiskIO}

// Capacity sources (ResourceStatus.source).
const (
	SourceDetected   = "detected"
	SourceConfigured = "configured"
	SourceDefault    = "default"
)

// Default capacities used when nothing better is known.
const (
	DefaultNetworkBps = 10_000_000_000 / 8 // 10 Gbps, in bytes/s
	DefaultDiskIOBps  = 1 << 30            // 1GB/s, as upstream
)

// Settings are the resource keys of the daemon config. Zero limits mean
// "detect"; zero ratios mean the default ratio.
type Settings struct {
	// DataDir is where the daemon keeps everything (its filesystem is the
	// disk capacity).
	DataDir string
	// Capacity overrides (0 = detect). MemoryReserve is subtracted from a
	// detected MemTotal (not from a configured MemoryLimit).
	CPULimit      int
	MemoryLimit   int64
	MemoryReserve int64
	DiskLimit     int64
	NetworkLimit  int64 // bytes/s
	DiskIOLimit   int64 // bytes/s
	Ratios        Ratios
}

// Ratios are the oversubscription ratios per resource.
type Ratios map[Kind]float64

// DefaultRatios are upstream hypeman's defaults.
func DefaultRatios() Ratios {
	return Ratios{CPU: 4.0, Memory: 1.0, Disk: 1.0, Network: 2.0, DiskIO: 2.0}
}

// RatioKeys are the config keys of the ratios (named in refusals).
var RatioKeys = map[Kind]string{
	CPU: "oversub_cpu", Memory: "oversub_memory", Disk: "oversub_disk", Network: "oversub_network", DiskIO: "oversub_disk_io",
}

// LimitKeys are the config keys that set a capacity.
var LimitKeys = map[Kind]string{
	CPU: "cpu_limit", Memory: "memory_limit", Disk: "disk_limit", Network: "network_limit", DiskIO: "disk_io_limit",
}

// Capacity is one resource's raw host capacity and how it was found.
type Capacity struct {
	Value  int64
	Source string
}

// Host is the capacity of every resource.
type Host map[Kind]Capacity

// Probe reads what the capacity detection needs from the host; tests give
// fixed values.
type Probe struct {
	NumCPU    func() int
	MemTotal  func() (int64, error)
	FSSize    func(path string) (int64, error)
	UplinkBps func() (int64, error) // bytes/s; error = unknown
}

// HostProbe reads the real host.
func HostProbe() Probe {
	return Probe{
		NumCPU:    runtime.NumCPU,
		MemTotal:  func() (int64, error) { return memInfoField("MemTotal") },
		FSSize:    fsSize,
		UplinkBps: uplinkBps,
	}
}

// Validate checks the settings (a config error names the key).
func (s Settings) Validate() error {
	var errs []error
	for _, k := range Kinds {
		if r, ok := s.Ratios[k]; ok && (r <= 0 || r > 1000) {
			errs = append(errs, fmt.Errorf("%s %g: must be > 0 and at most 1000 (1.0 = no oversubscription)", RatioKeys[k], r))
		}
	}
	for k, v := range map[string]int64{"cpu_limit": int64(s.CPULimit), "memory_limit": s.MemoryLimit, "memory_reserve": s.MemoryReserve,
		"disk_limit": s.DiskLimit, "network_limit": s.NetworkLimit, "disk_io_limit": s.DiskIOLimit} {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%s must be >= 0 (0 = detect)", k))
		}
	}
	return errors.Join(errs...)
}

// ratio is the effective ratio of k (the default when unset).
func (s Settings) ratio(k Kind) float64 {
	if r, ok := s.Ratios[k]; ok && r > 0 {
		return r
	}
	return DefaultRatios()[k]
}

// DetectHost finds the capacity of every resource: configured values win,
// then what the host reports.
func DetectHost(s Settings, p Probe) (Host, error) {
	h := Host{}
	if s.CPULimit > 0 {
		h[CPU] = Capacity{int64(s.CPULimit), SourceConfigured}
	} else {
		h[CPU] = Capacity{int64(p.NumCPU()), SourceDetected}
	}
	if s.MemoryLimit > 0 {
		h[Memory] = Capacity{s.MemoryLimit, SourceConfigured}
	} else {
		total, err := p.MemTotal()
		if err != nil {
			return nil, fmt.Errorf("resources: host memory: %w (set %s)", err, LimitKeys[Memory])
		}
		if s.MemoryReserve >= total {
			return nil, fmt.Errorf("resources: memory_reserve %d is not below the host's %d bytes of memory", s.MemoryReserve, total)
		}
		h[Memory] = Capacity{total - s.MemoryReserve, SourceDetected}
	}
	if s.DiskLimit > 0 {
		h[Disk] = Capacity{s.DiskLimit, SourceConfigured}
	} else {
		size, err := p.FSSize(s.DataDir)
		if err != nil {
			return nil, fmt.Errorf("resources: data dir filesystem: %w (set %s)", err, LimitKeys[Disk])
		}
		h[Disk] = Capacity{size, SourceDetected}
	}
	switch bps, err := p.UplinkBps(); {
	case s.NetworkLimit > 0:
		h[Network] = Capacity{s.NetworkLimit, SourceConfigured}
	case err == nil && bps > 0:
		h[Network] = Capacity{bps, SourceDetected}
	default:
		h[Network] = Capacity{DefaultNetworkBps, SourceDefault}
	}
	if s.DiskIOLimit > 0 {
		h[DiskIO] = Capacity{s.DiskIOLimit, SourceConfigured}
	} else {
		h[DiskIO] = Capacity{DefaultDiskIOBps, SourceDefault}
	}
	return h, nil
}

// fsSize is the size of the filesystem holding path (the nearest existing
// parent: the data dir may not exist yet).
func fsSize(path string) (int64, error) {
	for {
		var st unix.Statfs_t
		err := unix.Statfs(path, &st)
		if err == nil {
			return int64(st.Blocks) * int64(st.Bsize), nil
		}
		parent := filepath.Dir(path)
		if !errors.Is(err, unix.ENOENT) || parent == path {
			return 0, fmt.Errorf("statfs %s: %w", path, err)
		}
		path = parent
	}
}

// MemInfo reads the host's /proc/meminfo fields hypeman uses.
func memInfoField(name string) (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	return parseMemInfo(b, name)
}

// HostMemAvailable is the host's MemAvailable in bytes.
func HostMemAvailable() (int64, error) { return memInfoField("MemAvailable") }

// parseMemInfo returns field (in bytes) from /proc/meminfo content.
func parseMemInfo(b []byte, field string) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || name != field {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			break
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			break
		}
		if len(f) > 1 && f[1] == "kB" {
			n *= 1024
		}
		return n, nil
	}
	return 0, fmt.Errorf("/proc/meminfo: no %s", field)
}

// uplinkBps is the link speed of the interface holding the default route
// (/sys/class/net/IF/speed, Mbit/s), in bytes/s. Virtual NICs report none.
func uplinkBps() (int64, error) {
	b, err := os.ReadFile("/proc/net/route")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 2 || f[1] != "00000000" {
			continue
		}
		s, err := os.ReadFile(filepath.Join("/sys/class/net", f[0], "speed"))
		if err != nil {
			return 0, err
		}
		mbit, err := strconv.ParseInt(strings.TrimSpace(string(s)), 10, 64)
		if err != nil || mbit <= 0 {
			return 0, fmt.Errorf("%s reports no link speed", f[0])
		}
		return mbit * 1_000_000 / 8, nil
	}
	return 0, errors.New("no default route")
}
