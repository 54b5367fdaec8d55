package instances

import (
	"context"
	"errors"
	"fmt"
	"time"

	"hypeman/internal/hypervisor"
	"hypeman/internal/network"
	"hypeman/internal/units"
)

// Rate limits applied to create requests: from 1 Mbit/s (125,000 bytes/s;
// less starves a guest's disk or TCP) to 100 GB/s (beyond any device here).
const (
	MinRateBytesPerSec = 125_000
	MaxRateBytesPerSec = 100 << 30
)

// Limits are the resource knobs beyond size/vcpus/overlay, parsed once at
// create: the values the VM is built with and their display strings. Zero
// values (and "") mean not set: no hotplug memory, no I/O or bandwidth
// limit (there is no proportional default).
type Limits struct {
	// HotplugBytes is memory the VM boots with beyond Size, held back by
	// a balloon until SetMemoryTarget grows the guest into it.
	HotplugBytes int64  `json:"hotplug_bytes,omitempty"`
	HotplugSize  string `json:"hotplug_size,omitempty"`
	// DiskIOBytesPerSec caps the writable disks' combined throughput.
	DiskIOBytesPerSec int64  `json:"disk_io_bytes_per_sec,omitempty"`
	DiskIOBps         string `json:"disk_io_bps,omitempty"`
	// Download (external → VM) and upload (VM → external) bandwidth.
	DownloadBytesPerSec int64  `json:"bandwidth_download_bytes_per_sec,omitempty"`
	BandwidthDownload   string `json:"bandwidth_download,omitempty"`
	UploadBytesPerSec   int64  `json:"bandwidth_upload_bytes_per_sec,omitempty"`
	BandwidthUpload     string `json:"bandwidth_upload,omitempty"`
}

// bandwidth is what the network enforces on the instance's TAP.
func (l Limits) bandwidth() network.Bandwidth {
	return network.Bandwidth{Download: l.DownloadBytesPerSec, Upload: l.UploadBytesPerSec}
}

// parseLimits validates the knobs of p for an instance of memBytes memory.
// networking says whether the instance will have a shapeable network ("" =
// yes, else why not).
func parseLimits(p CreateParams, memBytes int64, networking string) (Limits, error) {
	var l Limits
	if p.HotplugSize != "" {
		n, err := units.ParseSize(p.HotplugSize)
		if err != nil {
			return l, &InvalidArgumentError{Field: "hotplug_size", Reason: err.Error() + "; 0 or omitted = no hotplug memory"}
		}
		if n%(1<<20) != 0 {
			return l, &InvalidArgumentError{Field: "hotplug_size", Reason: fmt.Sprintf("%s is not a whole number of MB", p.HotplugSize)}
		}
		if memBytes+n > MaxMemoryBytes {
			return l, &InvalidArgumentError{Field: "hotplug_size", Reason: fmt.Sprintf("size + hotplug_size is %s, more than the maximum %s",
				units.FormatSize(memBytes+n), units.FormatSize(MaxMemoryBytes))}
		}
		if n > 0 {
			l.HotplugBytes, l.HotplugSize = n, units.FormatSize(n)
		}
	}
	rate := func(field, s string, bytes *int64, shown *string) error {
		if s == "" {
			return nil
		}
		r, err := units.ParseRate(s)
		if err != nil {
			return &InvalidArgumentError{Field: field, Reason: err.Error() + "; 0 or omitted = no limit"}
		}
		if r.IsZero() {
			return nil
		}
		if r.BytesPerSec < MinRateBytesPerSec || r.BytesPerSec > MaxRateBytesPerSec {
			return &InvalidArgumentError{Field: field, Reason: fmt.Sprintf("%s is out of range (1Mbps to 100GB/s; 0 = no limit)", s)}
		}
		*bytes, *shown = r.BytesPerSec, r.String()
		return nil
	}
	if err := rate("disk_io_bps", p.DiskIOBps, &l.DiskIOBytesPerSec, &l.DiskIOBps); err != nil {
		return l, err
	}
	if err := rate("network.bandwidth_download", p.BandwidthDownload, &l.DownloadBytesPerSec, &l.BandwidthDownload); err != nil {
		return l, err
	}
	if err := rate("network.bandwidth_upload", p.BandwidthUpload, &l.UploadBytesPerSec, &l.BandwidthUpload); err != nil {
		return l, err
	}
	if networking != "" {
		switch {
		case l.DownloadBytesPerSec > 0:
			return l, &InvalidArgumentError{Field: "network.bandwidth_download", Reason: "cannot be enforced: " + networking}
		case l.UploadBytesPerSec > 0:
			return l, &InvalidArgumentError{Field: "network.bandwidth_upload", Reason: "cannot be enforced: " + networking}
		}
	}
	return l, nil
}

// shapeableNetwork says why bandwidth limits cannot be enforced for an
// instance ("" = they can: bridge networking with a TAP per VM).
func (m *Manager) shapeableNetwork(networkDisabled bool) string {
	switch {
	case m.cfg.Network == nil:
		return "this host runs VMs without networking"
	case networkDisabled:
		return "networking is disabled for this instance (network.enabled=false)"
	case m.cfg.Network.Mode() != network.ModeBridge:
		return fmt.Sprintf("this host uses %s networking; limits need bridge networking (a TAP per VM)", m.cfg.Network.Mode())
	}
	return ""
}

// vmMemory returns the RAM a VM of meta is built with and how much of it
// the balloon holds back at boot, in MiB.
func vmMemory(meta Metadata) (memoryMiB, balloonMiB int) {
	return int((meta.MemoryBytes + meta.Limits.HotplugBytes) >> 20), int(meta.Limits.HotplugBytes >> 20)
}

// SetMemoryTarget sets how much memory a running instance's guest may use:
// from its size up to size + hotplug_size, by deflating or inflating the
// balloon that holds the hotplug memory. The guest follows within about a
// second; a fresh boot starts at size again (a restore keeps the target it
// was saved with).
func (m *Manager) SetMemoryTarget(ctx context.Context, ref string, target int64) (err error) {
	defer m.observe("set_memory_target", time.Now(), &err)
	e, err := m.resolve(ref)
	if err != nil {
		return err
	}
	e.op.Lock()
	defer e.op.Unlock()
	e.mu.Lock()
	meta, lv := e.meta, e.live
	e.mu.Unlock()
	if meta.Limits.HotplugBytes == 0 {
		return &InvalidArgumentError{Field: "memory_target", Reason: "the instance has no hotplug memory (create it with hotplug_size)"}
	}
	memMiB, balloonMiB := vmMemory(meta)
	lo, hi := int64(memMiB-balloonMiB)<<20, int64(memMiB)<<20
	if target < lo || target > hi {
		return &InvalidArgumentError{Field: "memory_target", Reason: fmt.Sprintf("%d bytes is out of range (%s to %s: size to size + hotplug_size)",
			target, units.FormatSize(lo), units.FormatSize(hi))}
	}
	if lv == nil {
		st := m.currentState(ctx, e)
		return &TransitionError{Action: "set the memory target of", State: st, Allowed: Allowed(st)}
	}
	b, ok := lv.vm.(hypervisor.MemoryBalloon)
	if !ok {
		return fmt.Errorf("set memory target: %w", hypervisor.ErrNoBalloon)
	}
	if err := b.SetMemoryTarget(ctx, target); err != nil {
		if errors.Is(err, hypervisor.ErrNoBalloon) {
			return fmt.Errorf("set memory target: the VM was started without a balloon: %w", err)
		}
		return fmt.Errorf("set memory target: %w", err)
	}
	m.logf(meta.ID, "memory target set to %s", units.FormatSize(target))
	return nil
}
