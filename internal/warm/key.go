package warm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
)

// Shape is what a create request decides about a template: the image and
// the VM's hardware. Two requests with equal shapes can be served by the
// same template (whatever their program, env, name or network address).
type Shape struct {
	ImageDigest string `json:"image_digest"`
	MemoryMiB   int    `json:"memory_mib"`
	// BalloonMiB is the hotplug memory a balloon holds back (0: none).
	BalloonMiB   int   `json:"balloon_mib,omitempty"`
	VCPUs        int   `json:"vcpus"`
	OverlayBytes int64 `json:"overlay_bytes"`
	// DiskIOBps is the writable disks' throughput limit: it is part of
	// the saved VMM command line, so a clone would inherit it.
	DiskIOBps int64 `json:"disk_io_bps,omitempty"`
	// NIC: the VM has a network device (a clone gets its own backend; a
	// NIC cannot be added or removed on restore).
	NIC bool `json:"nic"`
}

// Env is the host's part of a key: what every template depends on and an
// upgrade or a rebuild of the system files changes for all of them at once.
type Env struct {
	// KernelHash and InitrdHash are sha256 of the files' contents (the
	// initrd carries the init and the agent).
	KernelHash string `json:"kernel_hash"`
	InitrdHash string `json:"initrd_hash"`
	Cmdline    string `json:"cmdline"`
	// VMMBuild identifies the VMM binary (version and package build): a
	// saved state is only restored by the build that wrote it.
	VMMBuild string `json:"vmm_build"`
	// GuestFormat is guestconfig.FormatVersion (config disk, start op).
	GuestFormat int `json:"guest_format"`
}

// Key identifies a template: a template is served only for a request whose
// key is equal in every field.
type Key struct {
	Shape
	Env
}

// ID is the key's stable name (hex, 24 chars): the template's directory.
func (k Key) ID() string {
	b, _ := json.Marshal(k) // fixed struct: cannot fail
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12])
}

// EnvProbe computes the current Env. File hashes are cached by file
// identity (device, inode, size, mtime and ctime in ns): a rewrite in
// place or a replacement changes at least one of them, so a changed
// initrd is always hashed again.
type EnvProbe struct {
	KernelPath, InitrdPath, Cmdline string
	// VMMBuild reports the VMM build (e.g. "7.2.22 Debian 1:7.2+dfsg-7").
	VMMBuild    func(ctx context.Context) (string, error)
	GuestFormat int

	mu    sync.Mutex
	cache map[string]hashEntry
}

type fileID struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64
}

type hashEntry struct {
	id  fileID
	sum string
}

// Env returns the current environment.
func (p *EnvProbe) Env(ctx context.Context) (Env, error) {
	k, err := p.hash(p.KernelPath)
	if err != nil {
		return Env{}, err
	}
	i, err := p.hash(p.InitrdPath)
	if err != nil {
		return Env{}, err
	}
	e := Env{KernelHash: k, InitrdHash: i, Cmdline: p.Cmdline, GuestFormat: p.GuestFormat}
	if p.VMMBuild != nil {
		if e.VMMBuild, err = p.VMMBuild(ctx); err != nil {
			return Env{}, fmt.Errorf("warm: vmm build: %w", err)
		}
	}
	return e, nil
}

func identify(path string) (fileID, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileID{}, err
	}
	id := fileID{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.dev, id.ino = uint64(st.Dev), st.Ino
		id.ctime = st.Ctim.Sec*1e9 + st.Ctim.Nsec
	}
	return id, nil
}

func (p *EnvProbe) hash(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	id, err := identify(path)
	if err != nil {
		return "", fmt.Errorf("warm: %w", err)
	}
	p.mu.Lock()
	if h, ok := p.cache[path]; ok && h.id == id {
		p.mu.Unlock()
		return h.sum, nil
	}
	p.mu.Unlock()
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("warm: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("warm: hash %s: %w", path, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	// The identity after the read: a write during it changes the ctime,
	// and the next call hashes again.
	if after, err := identify(path); err == nil && after == id {
		p.mu.Lock()
		if p.cache == nil {
			p.cache = map[string]hashEntry{}
		}
		p.cache[path] = hashEntry{id: id, sum: sum}
		p.mu.Unlock()
	}
	return sum, nil
}
