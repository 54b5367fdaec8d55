// Package guestconfig is the contract between the host and the guest init.
//
// It owns the instance configuration the host writes to the config disk, the
// marker lines the init prints on the serial console, and the names of the
// devices both sides agree on. It has no dependencies so that the static guest
// init binary and the daemon share exactly one definition: a change here is a
// change on both sides of the VM boundary at once.
package guestconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
)

// Disk serials (virtio-blk "serial=" property). The init finds its disks by
// serial (/sys/block/vdX/serial), never by probe order, because virtio-mmio
// probe order is not stable across machine types.
const (
	SerialRoot    = "hm-root"    // read-only image disk (erofs or ext4)
	SerialOverlay = "hm-overlay" // per-instance writable ext4 disk (overlay upper)
	SerialConfig  = "hm-config"  // this config, raw JSON padded with NUL bytes
)

// AgentPortName is the virtio-serial port name of the guest agent channel.
const AgentPortName = "hypeman.agent"

// Marker lines printed by the init on the console (serial log).
const (
	// MarkerProgramStart is printed alone on a line right before the
	// program is executed.
	MarkerProgramStart = "HYPEMAN-PROGRAM-START"
	// MarkerExitPrefix starts the exit line: HYPEMAN-EXIT code=N message="..."
	MarkerExitPrefix = "HYPEMAN-EXIT "
	// MarkerAgentReady is printed when the guest agent is serving.
	MarkerAgentReady = "HYPEMAN-AGENT-READY"
)

// FormatVersion is the version of this contract (Config, markers, agent
// start op) as a pre-booted warm template depends on it: a template saved by
// a guest of another version is never restored (it is part of the warm
// template key). Bump it on any change a saved guest would misread.
const FormatVersion = 1

// ConfigDiskSize is the size of the raw config disk. The JSON must fit.
const ConfigDiskSize = 1 << 20

// ErrTooLarge is returned by Encode when the config does not fit the disk
// (an image or a request with megabytes of environment or arguments).
var ErrTooLarge = errors.New("guest config does not fit the 1 MiB config disk")

// Config is the per-instance configuration the init reads from the config disk.
type Config struct {
	// Entrypoint and Cmd are already resolved by the host from the image
	// config and the create request (Docker semantics: argv = Entrypoint+Cmd).
	Entrypoint []string          `json:"entrypoint,omitempty"`
	Cmd        []string          `json:"cmd,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
	WorkingDir string            `json:"working_dir,omitempty"`
	// User is "name", "uid", "uid:gid" or "name:group", resolved in the guest
	// against the image's /etc/passwd and /etc/group.
	User     string `json:"user,omitempty"`
	Hostname string `json:"hostname,omitempty"`
	// RootFS is the image disk's filesystem: "erofs" or "ext4".
	RootFS string `json:"rootfs"`
	// StopTimeoutSeconds is how long the init waits after forwarding SIGTERM
	// before it SIGKILLs the program on a graceful stop.
	StopTimeoutSeconds int `json:"stop_timeout_seconds,omitempty"`
	// Network is nil when the VM has no network device.
	Network *Network `json:"network,omitempty"`
	// SkipGuestAgent disables the agent.
	SkipGuestAgent bool `json:"skip_guest_agent,omitempty"`
	// MemoryTarget, when set, is the guest RAM in bytes the program starts
	// with while the VM has more (hotplug memory held back by a balloon
	// that inflates during boot): the init waits, bounded, until MemTotal
	// is at most this before it starts the program.
	MemoryTarget int64 `json:"memory_target,omitempty"`
	// Volumes are mounted in the instance root, in this order, before the
	// program starts.
	Volumes []VolumeMount `json:"volumes,omitempty"`
	// Template boots a warm template: the init does everything up to
	// "ready to run a program" (modules, disks, root and overlay mounted,
	// memory target reached, agent serving) and then waits for the agent's
	// start op, which carries the instance's own Config (program, env,
	// hostname, network...) instead of running this one's. Network and
	// Volumes are ignored in a template.
	Template bool `json:"template,omitempty"`
}

// VolumeMount is one volume disk the init mounts at MountPath inside the
// instance root (created if missing). Disks are found by serial, like the
// instance's own disks.
type VolumeMount struct {
	Serial    string `json:"serial"`
	MountPath string `json:"mount_path"`
	// ReadOnly mounts the ext4 volume read-only (the host also attaches the
	// disk read-only).
	ReadOnly bool `json:"readonly,omitempty"`
	// Overlay mounts an overlayfs at MountPath: the (read-only) volume is
	// the lower layer, the ext4 disk OverlaySerial holds upper/ and work/.
	Overlay       bool   `json:"overlay,omitempty"`
	OverlaySerial string `json:"overlay_serial,omitempty"`
}

// VolumeSerial is the serial of the i-th volume disk of an instance and
// VolumeOverlaySerial that of its per-instance overlay disk. Both stay
// within the 20 bytes virtio-blk allows for any index below 10^12.
func VolumeSerial(i int) string        { return fmt.Sprintf("hm-vol%d", i) }
func VolumeOverlaySerial(i int) string { return fmt.Sprintf("hm-vol%d-ov", i) }

// ReservedMountPaths are the guest paths no volume may be mounted on or
// under: the kernel filesystems the init mounts in the instance root (a
// volume there would hide them or be hidden by them).
var ReservedMountPaths = []string{"/proc", "/sys", "/dev"}

// CheckMountPath says why p cannot be a volume mount path ("" when it
// can): it must be absolute and clean (no "..", ".", "//" or trailing
// slash), not "/", and not on or under a ReservedMountPaths entry. Both
// sides use it: the host on the request, the guest on the path after
// resolving the image's symlinks.
func CheckMountPath(p string) string {
	switch {
	case p == "":
		return "is required"
	case !strings.HasPrefix(p, "/"):
		return "must be an absolute path (starting with /)"
	case strings.ContainsRune(p, 0):
		return "must not contain NUL bytes"
	case path.Clean(p) != p:
		return fmt.Sprintf("must be a clean path without \"..\", \".\", repeated or trailing slashes (e.g. %s)", path.Clean(p))
	case p == "/":
		return "must not be / (the instance root)"
	}
	for _, r := range ReservedMountPaths {
		if p == r || strings.HasPrefix(p, r+"/") {
			return fmt.Sprintf("must not be on or under %s (reserved: %s)", r, strings.Join(ReservedMountPaths, ", "))
		}
	}
	return ""
}

// Network is the static guest network configuration.
type Network struct {
	MAC     string   `json:"mac"`
	Address string   `json:"address"` // CIDR, e.g. 10.100.0.5/16
	Gateway string   `json:"gateway"`
	DNS     []string `json:"dns,omitempty"`
}

// Argv returns Entrypoint followed by Cmd.
func (c *Config) Argv() []string {
	out := make([]string, 0, len(c.Entrypoint)+len(c.Cmd))
	out = append(out, c.Entrypoint...)
	return append(out, c.Cmd...)
}

// Encode renders the config disk image: JSON followed by NUL padding up to
// ConfigDiskSize.
func (c *Config) Encode() ([]byte, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode guest config: %w", err)
	}
	if len(b) >= ConfigDiskSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(b), ConfigDiskSize-1)
	}
	out := make([]byte, ConfigDiskSize)
	copy(out, b)
	return out, nil
}

// Decode parses a config disk image (trailing NUL bytes are ignored).
func Decode(disk []byte) (*Config, error) {
	if i := bytes.IndexByte(disk, 0); i >= 0 {
		disk = disk[:i]
	}
	if len(bytes.TrimSpace(disk)) == 0 {
		return nil, errors.New("config disk is empty")
	}
	var c Config
	if err := json.Unmarshal(disk, &c); err != nil {
		return nil, fmt.Errorf("decode guest config: %w", err)
	}
	return &c, nil
}

// Exit is the parsed form of a HYPEMAN-EXIT line.
type Exit struct {
	Code    int
	Message string
}

// FormatExit renders the exit marker line (without newline).
func FormatExit(e Exit) string {
	return fmt.Sprintf("%scode=%d message=%s", MarkerExitPrefix, e.Code, strconv.Quote(e.Message))
}

// ParseExit parses one line; ok is false when the line is not an exit marker.
// The marker may be preceded by other output on the same line (the program
// may not have ended its last line with a newline).
func ParseExit(line string) (Exit, bool) {
	i := strings.LastIndex(line, MarkerExitPrefix+"code=")
	if i < 0 {
		return Exit{}, false
	}
	rest := strings.TrimRight(line[i+len(MarkerExitPrefix)+len("code="):], "\r\n")
	sp := strings.IndexByte(rest, ' ')
	if sp < 0 {
		return Exit{}, false
	}
	code, err := strconv.Atoi(rest[:sp])
	if err != nil {
		return Exit{}, false
	}
	msg := strings.TrimPrefix(rest[sp+1:], "message=")
	if m, err := strconv.Unquote(msg); err == nil {
		msg = m
	}
	return Exit{Code: code, Message: msg}, true
}
