// Package resources owns what the host can hold and what its instances hold:
// host capacity (cpu, memory, disk, network, disk I/O), the oversubscription
// ratios that turn capacity into an effective limit, the allocation ledger,
// admission control, the disk breakdown, and guest memory reclaim through
// virtio balloons.
//
// Why a package of its own: without it nothing stops ten 8 GB instances on a
// 24 GB host, and the host then swaps itself to death instead of refusing
// work it cannot hold. Admission has to be one atomic check-and-hold shared
// by every lifecycle operation (create, start, restore, fork, restart
// policy), so it lives in one place that the instance manager calls, with
// one lock, instead of being recomputed from instance lists by each caller
// (two racing creates would both see the last free slot).
//
// # Model
//
//   - Capacity: cpu = online CPUs; memory = MemTotal minus memory_reserve
//     (default 0, as upstream: the ratio, not a reserve, is the usual knob);
//     disk = size of the filesystem holding the data dir (statfs); network =
//     network_limit, else the uplink's link speed when the kernel reports one,
//     else 10 Gbps with source "default"; disk_io = disk_io_limit (default
//     1GB/s). Each capacity can be set in the config (*_limit keys) and its
//     ResourceStatus.source says which ("detected", "configured", "default").
//   - effective_limit = capacity × ratio (defaults as upstream hypeman: cpu
//     4.0, memory 1.0, disk 1.0, network 2.0, disk_io 2.0).
//   - Ledger: one Hold per instance. A running hold (Initializing, Running,
//     Paused: a VMM exists) counts vcpus, memory (size + hotplug_size: the VM
//     is built with all of it), network (max of the download and upload
//     limits: they share one link) and disk I/O limits. Every instance, also
//     Stopped or Standby, holds its disk (the provisioned overlay size).
//     Stopped and Standby instances hold no cpu or memory.
//   - Disk allocated = provisioned instance disks + what the scan of the data
//     dir finds for images, the built-in registry's blobs (oci cache),
//     volumes and snapshots (standby states included). Scanned sizes are
//     allocated blocks (st_blocks × 512), not apparent sizes: overlays,
//     volumes and memory states are sparse files.
//   - Admit is atomic: under the ledger lock it checks every resource of the
//     demand against effective_limit minus everything else held, and on
//     success replaces the instance's previous hold. A refusal is an
//     *InsufficientError naming the resource, what was asked, what is free,
//     the limit and the config key that raises it.
//
// Reclaim (reclaim.go) inflates balloons of running guests that were
// created with hotplug_size, down to their base size at most, and deflates
// them back when the hold expires. Holds live in memory only: a daemon
// restart forgets them and the guests keep the target they had.
package resources
