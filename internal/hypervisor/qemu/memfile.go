package qemu

// File-backed guest RAM: templates whose clones share their memory.
//
// Why it works this way:
//   - A template VM (VMConfig.MemoryFile) runs with its RAM in a
//     memory-backend-file mapped share=on: the guest's RAM *is* the file.
//     Saving with the x-ignore-shared migration capability leaves shared
//     RAM blocks out of the stream, so the state is the device state only
//     (tens of KB) and the file holds the RAM.
//   - A clone (RestoreConfig.MemoryFile) maps the same file share=off
//     (MAP_PRIVATE): pages it only reads come from the page cache, shared
//     by every clone (PSS splits them between the mappers); the first write
//     to a page copies it into the clone's own anonymous memory, and the
//     file is never written. The incoming side sets x-ignore-shared too (it
//     changes the stream format: the source sends each block's guest
//     address); the clone's block is not shared, QEMU loads nothing into it
//     and the guest sees what the mapping shows: the template's RAM.
//   - The backend object always has the id memBackendID, whatever backs it:
//     migration matches RAM blocks by name, so a full-RAM save of a
//     file-backed VM (a clone's standby, or a template saved with its RAM)
//     records memory-backend-ram under the same id. Such a snapshot is
//     self-contained: restoring it never opens the template's file.
//   - No balloon with a memory file: QEMU 7.2 discards ballooned pages of a
//     file-backed block with fallocate(PUNCH_HOLE) on the file even when the
//     block is mapped privately, so a clone's balloon would zero pages of
//     the template's file under every other clone.
//   - The snapshot records the file's size and a sampled fingerprint:
//     restoring with another template's file (or one rewritten since) fails
//     before QEMU starts instead of running a guest on foreign memory. The
//     file is fsynced at save, so a snapshot that survives a host crash has
//     its memory on disk too.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cespare/xxhash/v2"

	"hypeman/internal/hypervisor"
)

const (
	// memBackendID is the -object id of the RAM backend of VMs launched
	// with a memory file, and the RAM block name in their migration stream.
	memBackendID = "hm-ram"
	// capIgnoreShared is the migration capability that leaves shared RAM
	// blocks out of the stream (experimental prefix in QEMU 7.2).
	capIgnoreShared = "x-ignore-shared"
	// Fingerprint sampling: memSamples chunks of memSampleBytes spread
	// evenly over the file (4 MiB read, whatever the guest size).
	memSamples     = 64
	memSampleBytes = 64 << 10
	// fingerprintAlgo names the fingerprint scheme in snapshot.json.
	fingerprintAlgo = "xxh64-sampled"
)

// MemoryFileMeta is the snapshot.json record of a snapshot saved without
// its RAM (hypervisor.SaveOptions.ExcludeMemory).
type MemoryFileMeta struct {
	// Path is where the saving VM's memory file was (absolute); for
	// messages only, Restore maps RestoreConfig.MemoryFile.
	Path string `json:"path"`
	// Size is the file size in bytes (the guest RAM size).
	Size int64 `json:"size"`
	// Fingerprint is "xxh64-sampled:<16 hex digits>" (memFingerprint).
	Fingerprint string `json:"fingerprint"`
}

// memoryBackendObject is the -object value of a file-backed RAM backend.
func memoryBackendObject(memoryMiB int, path string, share bool) string {
	s := "memory-backend-file,id=" + memBackendID + ",size=" + strconv.Itoa(memoryMiB) + "M,mem-path=" + escapeOpt(path) + ",share="
	if share {
		return s + "on"
	}
	return s + "off"
}

// memBackendIndex returns the index in argv of the -object value defining
// memBackendID, or -1.
func memBackendIndex(argv []string) int {
	i := flagIndex(argv, "-object", func(v string) bool { id, _ := optValue(v, "id"); return id == memBackendID })
	if i < 0 {
		return -1
	}
	return i + 1
}

// sharedMemoryFile returns the mem-path of argv's RAM backend when it is a
// file mapped share=on (a template VM).
func sharedMemoryFile(argv []string) (string, bool) {
	i := memBackendIndex(argv)
	if i < 0 || !strings.HasPrefix(argv[i], "memory-backend-file,") {
		return "", false
	}
	if share, _ := optValue(argv[i], "share"); share != "on" {
		return "", false
	}
	return optValue(argv[i], "mem-path")
}

// argvWithPrivateMemory returns a copy of argv whose file-backed RAM maps
// path privately (share=off): the command line of a clone.
func argvWithPrivateMemory(argv []string, path string) ([]string, error) {
	i := memBackendIndex(argv)
	if i < 0 || !strings.HasPrefix(argv[i], "memory-backend-file,") {
		return nil, errors.New("the snapshot's command line has no file-backed RAM to map the memory file into")
	}
	size, _ := optValue(argv[i], "size")
	out := append([]string(nil), argv...)
	out[i] = "memory-backend-file,id=" + memBackendID + ",size=" + size + ",mem-path=" + escapeOpt(path) + ",share=off"
	return out, nil
}

// argvWithAnonMemory returns argv with a file-backed RAM backend replaced by
// anonymous RAM under the same id (argv itself when it has none): the
// command line a full-RAM snapshot records, so restoring it never opens
// the memory file.
func argvWithAnonMemory(argv []string) []string {
	i := memBackendIndex(argv)
	if i < 0 || !strings.HasPrefix(argv[i], "memory-backend-file,") {
		return argv
	}
	size, _ := optValue(argv[i], "size")
	out := append([]string(nil), argv...)
	out[i] = "memory-backend-ram,id=" + memBackendID + ",size=" + size
	return out
}

// createMemoryFile creates a template's memory file: sparse, size bytes.
// An existing file is refused, never truncated: clones of an earlier
// template may still map it (a shrunk file faults them with SIGBUS).
func createMemoryFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("memory file %s: %w (remove it first; clones of an old template may still map it, so give a new template a new file)", path, err)
		}
		return fmt.Errorf("memory file: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("memory file: %w", err)
	}
	return f.Close()
}

// memFingerprint identifies a memory file's content cheaply: XXH64 over
// its size and memSamples chunks spread evenly over it (the whole file
// when it is smaller). It tells one template's memory from another's
// (kernel data, page tables and free-page patterns differ between boots)
// and catches a file truncated or rewritten; it does not prove that every
// byte is unchanged.
func memFingerprint(path string) (size int64, fp string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, "", err
	}
	size = st.Size()
	h := xxhash.New()
	var hdr [8]byte
	binary.LittleEndian.PutUint64(hdr[:], uint64(size))
	h.Write(hdr[:])
	buf := make([]byte, memSampleBytes)
	for _, off := range sampleOffsets(size) {
		n := min(int64(memSampleBytes), size-off)
		if _, err := f.ReadAt(buf[:n], off); err != nil {
			return 0, "", fmt.Errorf("read memory file %s at %d: %w", path, off, err)
		}
		h.Write(buf[:n])
	}
	return size, fmt.Sprintf("%s:%016x", fingerprintAlgo, h.Sum64()), nil
}

// sampleOffsets returns the chunk offsets memFingerprint reads: page
// aligned, first and last chunk included.
func sampleOffsets(size int64) []int64 {
	if size <= memSamples*memSampleBytes {
		var offs []int64
		for off := int64(0); off < size; off += memSampleBytes {
			offs = append(offs, off)
		}
		return offs
	}
	offs := make([]int64, memSamples)
	span := size - memSampleBytes
	for i := range offs {
		offs[i] = (span * int64(i) / (memSamples - 1)) &^ 4095
	}
	return offs
}

// checkMemoryFile verifies the memory file a restore maps against the
// snapshot's record. want nil (a full-RAM snapshot) refuses any file.
func checkMemoryFile(want *MemoryFileMeta, path string) error {
	switch {
	case want == nil && path == "":
		return nil
	case want == nil:
		return fmt.Errorf("%w: memory file %s given, but the snapshot holds its RAM (it was not saved with ExcludeMemory)",
			hypervisor.ErrSnapshotIncompatible, path)
	case path == "":
		return fmt.Errorf("%w: the snapshot was saved without its RAM and needs its memory file (saved from %s): set the restore's memory file",
			hypervisor.ErrSnapshotIncompatible, want.Path)
	case !filepath.IsAbs(path):
		return fmt.Errorf("memory file %q: must be an absolute path", path)
	}
	size, fp, err := memFingerprint(path)
	if err != nil {
		return fmt.Errorf("%w: memory file: %w", hypervisor.ErrSnapshotCorrupt, err)
	}
	if size != want.Size {
		return fmt.Errorf("%w: memory file %s has %d bytes, the snapshot's RAM is %d", hypervisor.ErrSnapshotCorrupt, path, size, want.Size)
	}
	if fp != want.Fingerprint {
		return fmt.Errorf("%w: memory file %s is not the one this snapshot was saved with (fingerprint %s, snapshot has %s; saved from %s)",
			hypervisor.ErrSnapshotCorrupt, path, fp, want.Fingerprint, want.Path)
	}
	return nil
}
