package instances

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"hypeman/internal/network"
	"hypeman/internal/procfs"
)

// Stats is a point-in-time resource view of an instance's VMM process and
// disks, read from /proc and the filesystem (no guest cooperation needed).
type Stats struct {
	InstanceID   string `json:"instance_id"`
	InstanceName string `json:"instance_name"`
	Running      bool   `json:"running"`
	Pid          int    `json:"pid,omitempty"`
	// CPUSeconds is user+system CPU time the VMM consumed (all vCPUs).
	CPUSeconds float64 `json:"cpu_seconds"`
	// RSSBytes is the VMM's resident memory (guest RAM it touched + QEMU).
	RSSBytes int64 `json:"rss_bytes"`
	// VMSBytes is the VMM's virtual memory size.
	VMSBytes int64 `json:"vms_bytes"`
	// MemoryBytes is the guest memory size configured (size).
	MemoryBytes int64 `json:"memory_bytes"`
	// AllocatedMemoryBytes is the RAM the VM is built with: size +
	// hotplug_size (the hotplug part is held by the balloon until the
	// memory target is raised, and returned to the host meanwhile).
	AllocatedMemoryBytes int64 `json:"allocated_memory_bytes"`
	VCPUs                int   `json:"vcpus"`
	// NetRxBytes / NetTxBytes count what the VM received and sent through
	// its TAP device (0 without one).
	NetRxBytes int64 `json:"net_rx_bytes"`
	NetTxBytes int64 `json:"net_tx_bytes"`
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
	s := &Stats{
		InstanceID: meta.ID, InstanceName: meta.Name, MemoryBytes: meta.MemoryBytes, AllocatedMemoryBytes: meta.MemoryBytes + meta.Limits.HotplugBytes,
		VCPUs: meta.VCPUs, OverlaySizeBytes: meta.OverlayBytes,
	}
	if fi, err := os.Stat(filepath.Join(m.dir(meta.ID), overlayFile)); err == nil {
		s.OverlayAllocatedBytes = allocatedBytes(fi)
	}
	if lv == nil {
		return s, nil
	}
	s.Running, s.Pid = true, lv.vm.Pid()
	if meta.StartedAt != nil {
		s.UptimeSeconds = time.Since(*meta.StartedAt).Seconds()
	}
	ps, err := procfs.ReadStat(s.Pid)
	if err != nil {
		return s, nil // exited between the check and the read
	}
	s.CPUSeconds, s.RSSBytes, s.VMSBytes = ps.CPUSeconds(), ps.RSSBytes(), int64(ps.VSize)
	if tc, ok := m.cfg.Network.(tapCounter); ok {
		c, found, err := tc.TAPCounters(meta.ID)
		if err != nil {
			m.log.Debug("stats: TAP counters", "id", meta.ID, "err", err)
		}
		if found {
			s.NetRxBytes, s.NetTxBytes = int64(c.RxBytes), int64(c.TxBytes)
		}
	}
	return s, nil
}

// tapCounter is implemented by networks that can count a VM's traffic.
type tapCounter interface {
	TAPCounters(instanceID string) (network.Counters, bool, error)
}

// allocatedBytes is the disk space a file really uses (sparse files count
// only their allocated blocks).
func allocatedBytes(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return 0
}
