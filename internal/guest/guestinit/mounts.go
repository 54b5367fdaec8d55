package guestinit

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/guest/guestproc"
)

// Fixed locations in the initramfs. The init stays in the initramfs and the
// instance root is only a chroot target, so the init can unmount the overlay
// disk cleanly at the end (it holds nothing open on it).
const (
	lowerDir = "/hm/lower" // image disk, read-only
	diskDir  = "/hm/disk"  // writable overlay disk (ext4): upper/ and work/
	RootDir  = "/hm/root"  // overlayfs: the instance root
	etcDir   = "/hm/etc"   // generated hostname/hosts/resolv.conf
	volDir   = "/hm/vol"   // overlay volumes: <i>/lower (volume) and <i>/disk (upper disk)
)

// mounter mounts filesystems and remembers them so teardown can undo them in
// reverse order.
type mounter struct {
	mu      sync.Mutex // guards mounted: the agent may bind /etc files late
	mounted []string
	// writable holds the mounted targets of writable disks: if one cannot
	// be unmounted at teardown it is remounted read-only, so its data is
	// flushed and its journal clean.
	writable map[string]bool
	// etcMu serializes setEtcFile; etcBound holds the /etc files already
	// bind-mounted into the root.
	etcMu    sync.Mutex
	etcBound map[string]bool
}

func (m *mounter) mount(src, target, fstype string, flags uintptr, data string) error {
	if _, err := os.Stat(target); err != nil {
		if err := os.MkdirAll(target, 0o755); err != nil {
			return fmt.Errorf("mount %s: %w", target, err)
		}
	}
	if err := unix.Mount(src, target, fstype, flags, data); err != nil {
		what := fstype
		if flags&unix.MS_BIND != 0 {
			what = "bind"
		}
		return fmt.Errorf("mount %s (%s) on %s: %w", src, what, target, err)
	}
	m.mu.Lock()
	m.mounted = append(m.mounted, target)
	m.mu.Unlock()
	return nil
}

// mountEarly mounts the kernel filesystems the init itself needs. The console
// is only reachable once devtmpfs is mounted.
func (m *mounter) mountEarly() error {
	steps := []struct {
		src, target, fstype string
		flags               uintptr
		data                string
	}{
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666"},
		{"shm", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	}
	for _, s := range steps {
		err := m.mount(s.src, s.target, s.fstype, s.flags, s.data)
		if err != nil && !(errors.Is(err, unix.EBUSY) && s.target == "/dev") {
			return err
		}
	}
	// The links Docker provides in /dev; devtmpfs does not create them.
	for name, target := range map[string]string{
		"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
		"stderr": "/proc/self/fd/2", "core": "/proc/kcore",
	} {
		_ = os.Symlink(target, filepath.Join("/dev", name))
	}
	return nil
}

// mountRoot mounts the image disk read-only, the overlay disk read-write and
// the overlayfs combining them at RootDir.
func (m *mounter) mountRoot(rootDev, overlayDev, rootFS string) error {
	if rootFS == "" {
		rootFS = "erofs"
	}
	if err := m.mount(rootDev, lowerDir, rootFS, unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("image disk: %w", err)
	}
	if err := m.mountOverlay(lowerDir, overlayDev, diskDir, RootDir); err != nil {
		return fmt.Errorf("root %w", err)
	}
	return nil
}

// mountOverlay mounts the writable ext4 disk dev at disk (holding upper/
// and work/) and an overlayfs of lower and it at target.
func (m *mounter) mountOverlay(lower, dev, disk, target string) error {
	if err := m.mountWritable(dev, disk, "ext4", unix.MS_NOATIME, ""); err != nil {
		return fmt.Errorf("overlay disk: %w", err)
	}
	for _, d := range []string{"upper", "work"} {
		if err := os.MkdirAll(filepath.Join(disk, d), 0o755); err != nil {
			return fmt.Errorf("overlay disk: %w", err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s/upper,workdir=%s/work", lower, disk, disk)
	if err := m.mount("overlay", target, "overlay", 0, opts); err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	return nil
}

// mountWritable is mount for a writable disk (see mounter.writable).
func (m *mounter) mountWritable(src, target, fstype string, flags uintptr, data string) error {
	if err := m.mount(src, target, fstype, flags, data); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.writable == nil {
		m.writable = map[string]bool{}
	}
	m.writable[target] = true
	return nil
}

// mountVolumes mounts the volumes at their paths inside the instance root
// (after the root is ready, so teardown unmounts them first). disks maps
// serials to device names. The mount point is created inside the root if
// missing, resolving the image's symlinks as the program would see them
// (never outside the root); a path that resolves onto a reserved path is
// refused like the same path in the request.
func (m *mounter) mountVolumes(disks map[string]string, vols []guestconfig.VolumeMount) error {
	for i, v := range vols {
		if err := m.mountVolume(i, disks, v); err != nil {
			hint := ""
			if errors.Is(err, unix.EINVAL) {
				hint = " (a volume must hold an ext4 filesystem)"
			}
			return fmt.Errorf("volume %s at %s: %w%s", v.Serial, v.MountPath, err, hint)
		}
	}
	return nil
}

func (m *mounter) mountVolume(i int, disks map[string]string, v guestconfig.VolumeMount) error {
	if why := guestconfig.CheckMountPath(v.MountPath); why != "" {
		return fmt.Errorf("mount path %s", why)
	}
	target, err := guestproc.ResolveInRoot(RootDir, v.MountPath)
	if err != nil {
		return err
	}
	if inRoot := strings.TrimPrefix(target, RootDir); inRoot != v.MountPath {
		if why := guestconfig.CheckMountPath(inRoot); why != "" {
			return fmt.Errorf("mount path resolves (through the image's symlinks) to %s, which %s", inRoot, why)
		}
	}
	if err := ensureDir(RootDir, v.MountPath, 0o755); err != nil {
		return err
	}
	dev := "/dev/" + disks[v.Serial]
	switch {
	case v.Overlay:
		base := filepath.Join(volDir, strconv.Itoa(i))
		lower := filepath.Join(base, "lower")
		if err := m.mount(dev, lower, "ext4", unix.MS_RDONLY, ""); err != nil {
			return err
		}
		return m.mountOverlay(lower, "/dev/"+disks[v.OverlaySerial], filepath.Join(base, "disk"), target)
	case v.ReadOnly:
		return m.mount(dev, target, "ext4", unix.MS_RDONLY, "")
	default:
		return m.mountWritable(dev, target, "ext4", unix.MS_NOATIME, "")
	}
}

// prepareRoot mounts proc, sys and dev inside the instance root and makes
// sure /tmp exists. /dev is a recursive bind of the init's /dev so that a pty
// the agent allocates is the same device inside the root (every devpts
// mount is a separate instance).
func (m *mounter) prepareRoot() error {
	for _, d := range []string{"proc", "sys", "dev"} {
		if err := ensureDir(RootDir, "/"+d, 0o755); err != nil {
			return err
		}
	}
	if err := ensureDir(RootDir, "/tmp", os.ModeSticky|0o777); err != nil {
		return err
	}
	if err := m.mount("proc", filepath.Join(RootDir, "proc"), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return err
	}
	if err := m.mount("sysfs", filepath.Join(RootDir, "sys"), "sysfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return err
	}
	return m.mount("/dev", filepath.Join(RootDir, "dev"), "", unix.MS_BIND|unix.MS_REC, "")
}

// ensureDir creates dir (a path inside root) with mode if it does not exist.
// An existing directory is left alone.
func ensureDir(root, dir string, mode os.FileMode) error {
	host, err := guestproc.ResolveInRoot(root, dir)
	if err != nil {
		return fmt.Errorf("prepare %s: %w", dir, err)
	}
	if fi, err := os.Stat(host); err == nil && fi.IsDir() {
		return nil
	}
	if err := os.MkdirAll(host, 0o755); err != nil {
		return fmt.Errorf("prepare %s: %w", dir, err)
	}
	if err := os.Chmod(host, mode); err != nil { // MkdirAll applies the umask
		return fmt.Errorf("prepare %s: %w", dir, err)
	}
	return nil
}

// HostsFile renders /etc/hosts for hostname. With the guest's address
// (addr, an IP without prefix length) the hostname resolves to it, as in
// Docker; without, to 127.0.1.1.
func HostsFile(hostname, addr string) string {
	var b strings.Builder
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	if hostname != "" {
		if addr == "" {
			addr = "127.0.1.1"
		}
		fmt.Fprintf(&b, "%s\t%s\n", addr, hostname)
	}
	return b.String()
}

// ResolvConf renders /etc/resolv.conf for the DNS servers.
func ResolvConf(dns []string) string {
	var b strings.Builder
	for _, s := range dns {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	return b.String()
}

// EtcFiles returns the generated /etc files (name → content) for a hostname
// and a network configuration (nil: none): hostname and hosts when there is
// a hostname, resolv.conf when there are DNS servers. Files not generated
// are the image's own.
func EtcFiles(hostname string, n *guestconfig.Network) map[string]string {
	files := map[string]string{}
	if hostname != "" {
		addr := ""
		if n != nil {
			if p, err := netip.ParsePrefix(n.Address); err == nil {
				addr = p.Addr().String()
			}
		}
		files["hostname"] = hostname + "\n"
		files["hosts"] = HostsFile(hostname, addr)
	}
	if n != nil && len(n.DNS) > 0 {
		files["resolv.conf"] = ResolvConf(n.DNS)
	}
	return files
}

// writeEtc sets the hostname and generates the /etc files the config asks
// for.
func (m *mounter) writeEtc(cfg *guestconfig.Config) error {
	if cfg.Hostname != "" {
		if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
			return fmt.Errorf("set hostname: %w", err)
		}
	}
	for name, content := range EtcFiles(cfg.Hostname, cfg.Network) {
		if err := m.setEtcFile(name, content); err != nil {
			return err
		}
	}
	return nil
}

// setEtcFile writes a generated file under etcDir and, the first time,
// bind-mounts it over the image's /etc/<name>, like Docker does. Bind mounts
// keep the generated files off the persistent overlay disk (no copy-up of
// the image's /etc files). Later calls rewrite the file in place: the bind
// mount holds its inode, so a rename would not be seen.
func (m *mounter) setEtcFile(name, content string) error {
	m.etcMu.Lock()
	defer m.etcMu.Unlock()
	src := filepath.Join(etcDir, name)
	if err := os.MkdirAll(etcDir, 0o755); err != nil {
		return fmt.Errorf("generate /etc/%s: %w", name, err)
	}
	if err := os.WriteFile(src, []byte(content), 0o644); err != nil {
		return fmt.Errorf("generate /etc/%s: %w", name, err)
	}
	if m.etcBound[name] {
		return nil
	}
	if err := ensureDir(RootDir, "/etc", 0o755); err != nil {
		return err
	}
	target, err := guestproc.ResolveInRoot(RootDir, "/etc/"+name)
	if err != nil {
		return fmt.Errorf("generate /etc/%s: %w", name, err)
	}
	if _, err := os.Stat(target); err != nil {
		// The mount point must exist; create an empty file (in the
		// overlay, a harmless empty placeholder).
		if err := os.WriteFile(target, nil, 0o644); err != nil {
			return fmt.Errorf("generate /etc/%s: %w", name, err)
		}
	}
	if err := m.mount(src, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("generate /etc/%s: %w", name, err)
	}
	if m.etcBound == nil {
		m.etcBound = map[string]bool{}
	}
	m.etcBound[name] = true
	return nil
}

// unmountAll undoes the mounts in reverse order: volumes first (they were
// mounted after the root), then the root overlay and its disks. A mount
// that is still busy is detached lazily; a writable disk (the overlay disk,
// writable volumes, volume overlay disks) that cannot be unmounted is at
// least remounted read-only so its data is flushed and its journal clean
// for the next boot.
func (m *mounter) unmountAll() []error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	for i := len(m.mounted) - 1; i >= 0; i-- {
		t := m.mounted[i]
		if !strings.HasPrefix(t, "/hm/") {
			continue // the init's own /dev, /proc, /sys stay until power-off
		}
		err := unix.Unmount(t, 0)
		if err == nil {
			continue
		}
		if m.writable[t] {
			if rerr := unix.Mount("", t, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); rerr != nil {
				errs = append(errs, fmt.Errorf("unmount %s: %v; remount read-only: %w", t, err, rerr))
			}
			continue
		}
		if derr := unix.Unmount(t, unix.MNT_DETACH); derr != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", t, derr))
		}
	}
	m.mounted = nil
	unix.Sync()
	return errs
}
