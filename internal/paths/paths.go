// Package paths owns the on-disk layout of the data directory.
//
// Every package that persists state asks this package where to put it, so the
// layout is written down once and a data dir can be inspected (or cleaned) by
// a person reading one file.
//
//	<root>/
//	  jwt-secret                    HS256 secret (0600), created on first start
//	  system/kernel/                guest kernel: vmlinux (PVH ELF), vmlinuz, modules/
//	  system/initrd/<hash>.cpio     built initrds, by content hash
//	  images/                       image store (index.json, disks/<digest>/...)
//	  registry/                     built-in OCI registry blobs
//	  instances/<id>/               one dir per instance (metadata.json, disks, logs, sockets)
//	  snapshots/<id>/               snapshots taken from instances
//	  volumes/<id>/                 one dir per volume (volume.json, data.ext4)
//	  pushes/                       image push jobs (one JSON record each)
//	  templates/<key>/              warm create: pre-booted templates (package warm)
package paths

import "path/filepath"

// Paths resolves locations under one data directory.
type Paths struct{ Root string }

// New returns the layout rooted at root.
func New(root string) Paths { return Paths{Root: root} }

func (p Paths) JWTSecret() string            { return filepath.Join(p.Root, "jwt-secret") }
func (p Paths) KernelDir() string            { return filepath.Join(p.Root, "system", "kernel") }
func (p Paths) InitrdDir() string            { return filepath.Join(p.Root, "system", "initrd") }
func (p Paths) ImagesDir() string            { return filepath.Join(p.Root, "images") }
func (p Paths) RegistryDir() string          { return filepath.Join(p.Root, "registry") }
func (p Paths) InstancesDir() string         { return filepath.Join(p.Root, "instances") }
func (p Paths) InstanceDir(id string) string { return filepath.Join(p.Root, "instances", id) }
func (p Paths) SnapshotsDir() string         { return filepath.Join(p.Root, "snapshots") }
func (p Paths) SchedulesDir() string         { return filepath.Join(p.Root, "schedules") }
func (p Paths) SnapshotDir(id string) string { return filepath.Join(p.Root, "snapshots", id) }
func (p Paths) VolumesDir() string           { return filepath.Join(p.Root, "volumes") }
func (p Paths) VolumeDir(id string) string   { return filepath.Join(p.Root, "volumes", id) }
func (p Paths) PushesDir() string            { return filepath.Join(p.Root, "pushes") }
func (p Paths) TemplatesDir() string         { return filepath.Join(p.Root, "templates") }
