package instances

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Stats is a point-in-time resource view of an instance's VMM process and
// disks, read from /proc and the filesystem (no guest cooperation needed).
type Stats struct {
	InstanceID string `json:"instance_id"`
	Running    bool   `json:"running"`
	Pid        int    `json:"pid,omitempty"`
	// CPUSeconds is user+system CPU time the VMM consumed (all vCPUs).
	CPUSeconds float64 `json:"cpu_seconds"`
	// RSSBytes is the VMM's resident memory (guest RAM it touched + QEMU).
	RSSBytes int64 `json:"rss_bytes"`
	// MemoryBytes is the guest memory size configured.
	MemoryBytes int64 `json:"memory_bytes"`
	VCPUs       int   `json:"vcpus"`
	// OverlayAllocatedBytes is disk space the writable layer really uses.
	OverlayAllocatedBytes int64   `json:"overlay_allocated_bytes"`
	OverlaySizeBytes      int64   `json:"overlay_size_bytes"`
	UptimeSeconds         float64 `json:"uptime_seconds"`
}

// Stats reports resource usage of one instance.
func (m *Manager) Stats(ctx context.Context, ref string) (*Stats, error) {
	e, err := m.resolve(ref)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	meta, lv := e.meta, e.live
	e.mu.Unlock()
	s := &Stats{InstanceID: meta.ID, MemoryBytes: meta.MemoryBytes, VCPUs: meta.VCPUs, OverlaySizeBytes: meta.OverlayBytes}
	if st, err := os.Stat(filepath.Join(m.dir(meta.ID), overlayFile)); err == nil {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			s.OverlayAllocatedBytes = sys.Blocks * 512
		}
	}
	if lv == nil {
		return s, nil
	}
	s.Running, s.Pid = true, lv.vm.Pid()
	if meta.StartedAt != nil {
		s.UptimeSeconds = time.Since(*meta.StartedAt).Seconds()
	}
	cpu, rss, err := procUsage(s.Pid)
	if err != nil {
		return s, nil // exited between the check and the read
	}
	s.CPUSeconds, s.RSSBytes = cpu, rss
	return s, nil
}

// procUsage reads CPU seconds and RSS of pid from /proc.
func procUsage(pid int) (float64, int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// Fields after the parenthesised command name; utime/stime are 14/15,
	// rss is 24 (1-based, counting the pid as field 1).
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 22 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	stt, _ := strconv.ParseInt(f[12], 10, 64)
	rss, _ := strconv.ParseInt(f[21], 10, 64)
	const clkTck = 100 // USER_HZ on Linux/amd64
	return float64(ut+stt) / clkTck, rss * int64(os.Getpagesize()), nil
}
