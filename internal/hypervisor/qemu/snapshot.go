package qemu

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"

	"hypeman/internal/childproc"
	"hypeman/internal/hypervisor"
)

// Snapshot dir layout (see VM.SaveState).
const (
	// SnapshotMetaName is the snapshot's metadata file (SnapshotMeta).
	SnapshotMetaName = "snapshot.json"
	// StateFileName / StateFileNameZstd / StateFileNameLZ4 hold the QEMU
	// migration stream, uncompressed, as one zstd stream or as one lz4
	// frame (see codec.go).
	StateFileName     = "memory"
	StateFileNameZstd = "memory.zst"
	StateFileNameLZ4  = "memory.lz4"
	// SnapshotFormat is the layout version written into snapshot.json.
	// Restore accepts minSnapshotFormat up to this version. Additions that
	// older readers can ignore (state.level, lz4 files) kept it at 1;
	// format 2 added memory_file (a snapshot without its RAM, which a
	// format-1 reader would restore as a guest with empty memory).
	SnapshotFormat    = 2
	minSnapshotFormat = 1
	// snapshotKind tags snapshot.json so a foreign JSON file is not taken
	// for one.
	snapshotKind = "hypeman-qemu-snapshot"
)

// Checksum algorithm of the state file. XXH64, not SHA-256: it guards
// against torn or damaged files, not against an attacker who can write the
// snapshot dir (who could as well rewrite snapshot.json), and it keeps up with
// the migration stream: here SHA-256 hashes ~100 MB/s (no SHA extensions),
// XXH64 ~8.7 GB/s.
const checksumAlgo = "xxh64"

// SnapshotMeta is the content of snapshot.json.
type SnapshotMeta struct {
	Kind   string `json:"kind"`
	Format int    `json:"format"`
	// QEMUVersion and QEMUPackage are what the saving QEMU announced in its
	// QMP greeting ("7.2.22", "Debian 1:7.2+dfsg-7+deb12u18+b3"). The
	// migration stream is only guaranteed to load into the same build.
	QEMUVersion string                 `json:"qemu_version"`
	QEMUPackage string                 `json:"qemu_package,omitempty"`
	Accel       hypervisor.Accelerator `json:"accelerator"`
	TSCKHz      int                    `json:"tsc_khz,omitempty"`
	// Argv is the exact command line the VM was launched with (argv[0] is
	// the binary; paths inside the instance dir are relative to it). Restore
	// replays Argv[1:] with the driver's binary.
	Argv      []string `json:"argv"`
	MemoryMiB int      `json:"memory_mib"`
	// Kernel and Initrd are the boot files at their recorded paths
	// (relative paths are inside the instance dir).
	Kernel *FileDigest `json:"kernel"`
	Initrd *FileDigest `json:"initrd,omitempty"`
	// InstanceFiles are the in-dir files the VM opens (its disks) with
	// their sizes at save time.
	InstanceFiles []InstanceFile `json:"instance_files"`
	// MemoryFile is set when the state leaves the RAM out
	// (SaveOptions.ExcludeMemory): the RAM is in this file, which Restore
	// maps (format 2).
	MemoryFile *MemoryFileMeta `json:"memory_file,omitempty"`
	State      StateMeta       `json:"state"`
	CreatedAt  time.Time       `json:"created_at"`
}

// FileDigest identifies a boot file by content.
type FileDigest struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// InstanceFile is a file in the instance dir the VM keeps open.
type InstanceFile struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

// StateMeta describes the state file.
type StateMeta struct {
	File string `json:"file"`
	// Size is the file size; StreamSize the migration stream size (equal
	// without compression).
	Size        int64  `json:"size"`
	StreamSize  int64  `json:"stream_size"`
	Compression string `json:"compression,omitempty"` // "", "zstd" or "lz4"
	// Level is the compression level asked for (absent in zstd snapshots
	// written before levels existed: those used level 1).
	Level int `json:"level,omitempty"`
	// Checksum is "xxh64:<16 hex digits>" of the file's bytes as stored.
	Checksum string `json:"checksum"`
}

// Info converts the metadata of the snapshot in dir to the driver-neutral
// form.
func (m *SnapshotMeta) Info(dir string) *hypervisor.SnapshotInfo {
	files := make([]string, len(m.InstanceFiles))
	for i, f := range m.InstanceFiles {
		files[i] = f.Name
	}
	mf := ""
	if m.MemoryFile != nil {
		mf = m.MemoryFile.Path
	}
	return &hypervisor.SnapshotInfo{
		Dir:           dir,
		CreatedAt:     m.CreatedAt,
		MemoryMiB:     m.MemoryMiB,
		StateBytes:    m.State.Size,
		StreamBytes:   m.State.StreamSize,
		Compression:   m.State.compression(),
		InstanceFiles: files,
		MemoryFile:    mf,
	}
}

// ReadSnapshotMeta reads and structurally checks dir/snapshot.json. A missing,
// unparsable or malformed file is ErrSnapshotCorrupt; a readable file of
// another kind or format is ErrSnapshotIncompatible.
func ReadSnapshotMeta(dir string) (*SnapshotMeta, error) {
	b, err := os.ReadFile(filepath.Join(dir, SnapshotMetaName))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", hypervisor.ErrSnapshotCorrupt, dir, err)
	}
	var m SnapshotMeta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", hypervisor.ErrSnapshotCorrupt, SnapshotMetaName, err)
	}
	if m.Kind != snapshotKind {
		return nil, fmt.Errorf("%w: %s is not a QEMU snapshot (kind %q)", hypervisor.ErrSnapshotIncompatible, SnapshotMetaName, m.Kind)
	}
	if m.Format < minSnapshotFormat || m.Format > SnapshotFormat {
		return nil, fmt.Errorf("%w: snapshot format %d, this driver reads formats %d-%d", hypervisor.ErrSnapshotIncompatible,
			m.Format, minSnapshotFormat, SnapshotFormat)
	}
	var bad []string
	if len(m.Argv) < 2 {
		bad = append(bad, "no argv")
	}
	if m.Kernel == nil || m.Kernel.Path == "" {
		bad = append(bad, "no kernel")
	}
	switch c := m.State.compression(); {
	case m.State.File != StateFileName && m.State.File != StateFileNameZstd && m.State.File != StateFileNameLZ4:
		bad = append(bad, fmt.Sprintf("state file name %q", m.State.File))
	case m.State.File != stateFileName(c.Algorithm):
		bad = append(bad, fmt.Sprintf("state file %s with compression %q", m.State.File, m.State.Compression))
	case !c.Enabled() && (m.State.Level != 0 || m.State.Size != m.State.StreamSize):
		bad = append(bad, "uncompressed state with compression fields")
	case c.Validate() != nil:
		bad = append(bad, c.Validate().Error())
	}
	if _, err := parseChecksum(m.State.Checksum); err != nil {
		bad = append(bad, err.Error())
	}
	if m.State.Size <= 0 {
		bad = append(bad, "empty state")
	}
	for _, f := range m.InstanceFiles {
		if !filepath.IsLocal(f.Name) {
			bad = append(bad, fmt.Sprintf("instance file %q outside the instance dir", f.Name))
		}
	}
	_, shared := sharedMemoryFile(m.Argv)
	if shared && m.MemoryFile == nil {
		// Restoring it would load the RAM into the file: another VM's memory.
		bad = append(bad, "shared memory file in argv without a memory_file record")
	}
	if mf := m.MemoryFile; mf != nil {
		switch {
		case m.Format < 2:
			bad = append(bad, fmt.Sprintf("memory_file in a format %d snapshot", m.Format))
		case !filepath.IsAbs(mf.Path):
			bad = append(bad, fmt.Sprintf("memory file path %q not absolute", mf.Path))
		case mf.Size != int64(m.MemoryMiB)<<20:
			bad = append(bad, fmt.Sprintf("memory file of %d bytes for %d MiB of RAM", mf.Size, m.MemoryMiB))
		case !strings.HasPrefix(mf.Fingerprint, fingerprintAlgo+":"):
			bad = append(bad, fmt.Sprintf("memory file fingerprint %q", mf.Fingerprint))
		case !shared:
			bad = append(bad, "memory file without a shared file-backed RAM in argv")
		}
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("%w: %s: %s", hypervisor.ErrSnapshotCorrupt, SnapshotMetaName, strings.Join(bad, "; "))
	}
	return &m, nil
}

func formatChecksum(sum uint64) string { return fmt.Sprintf("%s:%016x", checksumAlgo, sum) }

func parseChecksum(s string) (uint64, error) {
	algo, hexsum, ok := strings.Cut(s, ":")
	if !ok || algo != checksumAlgo || len(hexsum) != 16 {
		return 0, fmt.Errorf("checksum %q: want %s:<16 hex digits>", s, checksumAlgo)
	}
	v, err := strconv.ParseUint(hexsum, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("checksum %q: %w", s, err)
	}
	return v, nil
}

// snapshotEnv is what a snapshot is checked against: the installed QEMU,
// the accelerator in use and the files on this host.
type snapshotEnv struct {
	qemuVersion string // "7.2.22"
	qemuPackage string // "Debian 1:7.2+dfsg-7+deb12u18+b3"
	accel       hypervisor.Accelerator
	// digest returns the size and sha256 of a file (cached by the driver).
	digest func(path string) (int64, string, error)
}

// checkSnapshot verifies that the snapshot described by m (in snapDir) can
// be restored into runDir under env: everything except the state checksum,
// which is verified while the state streams into QEMU. Errors wrap
// ErrSnapshotIncompatible or ErrSnapshotCorrupt; a missing instance file is
// fs.ErrNotExist (the caller did not prepare the dir).
func checkSnapshot(m *SnapshotMeta, snapDir, runDir string, env snapshotEnv) error {
	if m.QEMUVersion != env.qemuVersion || m.QEMUPackage != env.qemuPackage {
		return fmt.Errorf("%w: saved by QEMU %s (%s), installed QEMU is %s (%s)", hypervisor.ErrSnapshotIncompatible,
			m.QEMUVersion, m.QEMUPackage, env.qemuVersion, env.qemuPackage)
	}
	if m.Accel == hypervisor.AccelKVM && env.accel != hypervisor.AccelKVM {
		return fmt.Errorf("%w: saved under kvm, this host uses %s", hypervisor.ErrSnapshotIncompatible, env.accel)
	}
	for _, fd := range []*FileDigest{m.Kernel, m.Initrd} {
		if fd == nil {
			continue
		}
		p := fd.Path
		if !filepath.IsAbs(p) {
			p = filepath.Join(runDir, p)
		}
		size, sum, err := env.digest(p)
		if err != nil {
			return fmt.Errorf("%w: boot file: %w", hypervisor.ErrSnapshotIncompatible, err)
		}
		if size != fd.Size || sum != fd.SHA256 {
			return fmt.Errorf("%w: boot file %s changed since the snapshot (sha256 %.12s…, %d bytes; snapshot has %.12s…, %d bytes)",
				hypervisor.ErrSnapshotIncompatible, p, sum, size, fd.SHA256, fd.Size)
		}
	}
	st, err := os.Stat(filepath.Join(snapDir, m.State.File))
	if err != nil {
		return fmt.Errorf("%w: state file: %w", hypervisor.ErrSnapshotCorrupt, err)
	}
	if st.Size() != m.State.Size {
		return fmt.Errorf("%w: state file %s has %d bytes, snapshot.json says %d", hypervisor.ErrSnapshotCorrupt, m.State.File, st.Size(), m.State.Size)
	}
	for _, f := range m.InstanceFiles {
		st, err := os.Stat(filepath.Join(runDir, f.Name))
		if err != nil {
			return fmt.Errorf("instance file the snapshot needs: %w", err)
		}
		if st.Size() != f.Size {
			return fmt.Errorf("%w: instance file %s has %d bytes, it had %d when the snapshot was taken",
				hypervisor.ErrSnapshotIncompatible, f.Name, st.Size(), f.Size)
		}
	}
	return nil
}

// digestCache remembers file hashes by path, size and mtime, so the kernel
// (~50 MB) is hashed once per driver and not at every save and restore.
type digestCache struct {
	mu sync.Mutex
	m  map[string]digestEntry
}

type digestEntry struct {
	size  int64
	mtime time.Time
	sum   string
}

func (c *digestCache) digest(path string) (int64, string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, "", err
	}
	if !st.Mode().IsRegular() {
		return 0, "", fmt.Errorf("%s: not a regular file", path)
	}
	c.mu.Lock()
	e, ok := c.m[path]
	c.mu.Unlock()
	if ok && e.size == st.Size() && e.mtime.Equal(st.ModTime()) {
		return e.size, e.sum, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return 0, "", fmt.Errorf("hash %s: %w", path, err)
	}
	if n != st.Size() {
		return 0, "", fmt.Errorf("hash %s: changed while hashing", path)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]digestEntry{}
	}
	c.m[path] = digestEntry{size: st.Size(), mtime: st.ModTime(), sum: sum}
	c.mu.Unlock()
	return st.Size(), sum, nil
}

// versionRE matches `qemu-system-x86_64 --version`'s first line:
// "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)".
var versionRE = regexp.MustCompile(`^QEMU emulator version (\d+\.\d+\.\d+)(?: \((.*)\))?\s*$`)

// parseVersionOutput extracts the version and package from --version output.
func parseVersionOutput(out string) (version, pkg string, err error) {
	first, _, _ := strings.Cut(out, "\n")
	m := versionRE.FindStringSubmatch(strings.TrimSpace(first))
	if m == nil {
		return "", "", fmt.Errorf("unrecognised --version output %q", first)
	}
	return m[1], m[2], nil
}

// installedVersion runs `<binary> --version` once per driver.
func (d *Driver) installedVersion(ctx context.Context) (string, string, error) {
	d.verMu.Lock()
	defer d.verMu.Unlock()
	if d.verOK {
		return d.version, d.versionPkg, nil
	}
	out, err := childproc.CommandContext(ctx, d.binary, "--version").Output()
	if err != nil {
		return "", "", fmt.Errorf("%s --version: %w", d.binary, err)
	}
	v, pkg, err := parseVersionOutput(string(out))
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", d.binary, err)
	}
	d.version, d.versionPkg, d.verOK = v, pkg, true
	return v, pkg, nil
}

// argValue returns the value after the first occurrence of flag in argv.
func argValue(argv []string, flag string) (string, bool) {
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == flag {
			return argv[i+1], true
		}
	}
	return "", false
}

// optValue returns key's value in a QEMU key=value,... option string (",,"
// is a literal comma).
func optValue(opts, key string) (string, bool) {
	for _, kv := range splitOpts(opts) {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return strings.ReplaceAll(v, ",,", ","), true
		}
	}
	return "", false
}

// splitOpts splits a QEMU option string at single commas.
func splitOpts(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] != ',' {
			continue
		}
		if i+1 < len(s) && s[i+1] == ',' {
			i++
			continue
		}
		out = append(out, s[start:i])
		start = i + 1
	}
	return append(out, s[start:])
}

// instanceFilesOf returns the in-dir files (relative paths) a QEMU argv
// opens: the -drive files. Sockets, the serial log and other files QEMU
// creates itself are not listed.
func instanceFilesOf(argv []string) []string {
	var out []string
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] != "-drive" {
			continue
		}
		f, ok := optValue(argv[i+1], "file")
		if !ok || filepath.IsAbs(f) {
			continue
		}
		out = append(out, filepath.Clean(f))
	}
	return out
}

// memoryMiBOf parses -m ("256M", "1G", "512").
func memoryMiBOf(argv []string) (int, error) {
	v, ok := argValue(argv, "-m")
	if !ok {
		return 0, errors.New("argv has no -m")
	}
	v, _, _ = strings.Cut(v, ",")
	if s, ok := optValue(v, "size"); ok {
		v = s
	}
	mult := 1
	switch {
	case strings.HasSuffix(v, "M"):
		v = strings.TrimSuffix(v, "M")
	case strings.HasSuffix(v, "G"):
		v, mult = strings.TrimSuffix(v, "G"), 1024
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("argv -m %q: %w", v, err)
	}
	return n * mult, nil
}

// xxhashOf returns the XXH64 of a file's content.
func xxhashOf(path string) (uint64, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	h := xxhash.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return 0, n, err
	}
	return h.Sum64(), n, nil
}

// VMMBuild implements hypervisor.BuildReporter: QEMU's version and its
// package build ("7.2.22 Debian 1:7.2+dfsg-7+deb12u18+b3").
func (d *Driver) VMMBuild(ctx context.Context) (string, error) {
	v, pkg, err := d.installedVersion(ctx)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(v + " " + pkg), nil
}
