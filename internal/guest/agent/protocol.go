// Package agent is the guest agent: the protocol between the host daemon and
// the guest, the guest-side server (run by the guest init, PID 1) and the
// host-side client.
//
// Transport: one byte stream (a virtio-serial port in the guest, QEMU's unix
// socket on the host; vsock would fit as well) carrying a yamux session. The
// host is the yamux client, the guest the server. Every operation is its own
// yamux stream, so concurrent execs and copies are independent and each one
// gets yamux's per-stream flow control (a slow reader never stalls another
// stream) without a protocol of our own for multiplexing.
//
// On a stream the client first sends one JSON request line; the server answers
// with one JSON response line (an error ends the stream there). Operations
// that carry data then continue with frames: 1 byte type, 4 bytes big-endian
// payload length, payload. Frames (rather than a raw byte stream) let exec
// interleave stdout, stderr and the exit status, carry resize/signal/stdin-EOF
// messages, and let copies end with a status that reports errors found after
// the transfer began. JSON keeps the headers debuggable; gRPC would add a code
// generator and HTTP/2 for no gain on a single point-to-point link.
//
// Copies are per entry, not archives: "put" creates one file (its bytes
// follow as data frames), directory or symbolic link at an absolute guest
// path, and "read_tree" streams a file or a directory tree as a header frame
// per entry followed by the entry's bytes. This matches the hypeman API's cp
// WebSocket (one file per connection to the guest, headers plus raw chunks
// from it), so the daemon relays frames without spooling or re-encoding.
//
// Besides exec, stat, copies and shutdown, the agent re-addresses the guest
// (configure_network) and reseeds its kernel RNG (reseed): a fork restored
// from a snapshot wakes up with its source's MAC, IP and RNG state, and only
// the guest itself can change them.
//
// Session handshake: the first stream of every host connection is a "hello".
// A guest session that already answered a hello answers "stale session" and
// tears itself down. This closes a race the transport has: when the host
// disconnects and reconnects quickly (or while the VM is paused), the guest
// port's host-connected flag goes 0 → 1 before the guest's reader wakes, so
// the guest never sees EOF and the new host would talk to the old guest
// session (with stale stream ids). The host then redials and meets a fresh
// session.
//
// Why not half-close for end of input: yamux supports it, but an explicit
// frame makes "the client went away" (stream error/EOF: kill the exec) and
// "stdin ended" (frame: close the process's stdin) distinct.
package agent

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"hypeman/internal/guest/guestconfig"
)

// Operation names (Request.Op).
const (
	OpHello    = "hello"
	OpPing     = "ping"
	OpShutdown = "shutdown"
	OpExec     = "exec"
	OpStat     = "stat"
	// OpPut creates one file, directory or symbolic link (Request.Put).
	OpPut = "put"
	// OpReadTree streams a file or a directory tree (Request.Tree).
	OpReadTree = "read_tree"
	// OpConfigureNetwork re-addresses the guest's NIC (Request.Network).
	OpConfigureNetwork = "configure_network"
	// OpReseed adds host entropy to the guest kernel RNG (Request.Seed).
	OpReseed = "reseed"
	// OpStart gives a guest booted in template mode (guestconfig.Config
	// Template) its identity and its program (Request.Start).
	OpStart = "start"
)

// Request is the first line the client sends on a stream.
type Request struct {
	Op   string       `json:"op"`
	Path string       `json:"path,omitempty"` // stat
	Exec *ExecRequest `json:"exec,omitempty"`
	Put  *PutRequest  `json:"put,omitempty"`
	Tree *TreeRequest `json:"tree,omitempty"`
	// Network is the configuration for configure_network.
	Network *guestconfig.Network `json:"network,omitempty"`
	// Seed is the entropy for reseed (base64 in JSON).
	Seed []byte `json:"seed,omitempty"`
	// Start is the instance a template-mode guest becomes (op start).
	Start *StartRequest `json:"start,omitempty"`
}

// StartRequest turns a guest restored from a warm template into an
// instance: the init sets the wall clock, reseeds the kernel RNG, sets the
// hostname and /etc files, configures Config.Network, then runs the program
// exactly as a cold boot runs the config disk's (markers, exit line).
type StartRequest struct {
	// Config is the instance's configuration, as the config disk of a cold
	// boot would carry it (Template false; Volumes must be empty: a
	// template has no volume disks).
	Config guestconfig.Config `json:"config"`
	// HostTimeUnixNano is the host's wall clock when it sent the request:
	// the restored guest's clock is the template's, from when it was saved.
	HostTimeUnixNano int64 `json:"host_time_unix_nano"`
	// Seed (MinSeed..MaxSeed bytes from the host's CSPRNG) is mixed into
	// the kernel RNG before anything else, so no two clones share a
	// random stream.
	Seed []byte `json:"seed"`
}

// Response is the server's answer line. Code classifies errors the caller
// may branch on (CodeNotFound).
type Response struct {
	Error   string    `json:"error,omitempty"`
	Code    string    `json:"code,omitempty"`
	Stat    *FileInfo `json:"stat,omitempty"`
	Version int       `json:"version,omitempty"` // hello only
	// Written is the number of bytes a put stored (its end frame).
	Written int64 `json:"written,omitempty"`
}

// Error codes carried in Response.Code.
const (
	CodeNotFound   = "not_found"
	CodeBadRequest = "bad_request"
	// CodeConflict: the request is valid but the guest's filesystem is in
	// the way (a directory where a file should go, a file in a path).
	CodeConflict     = "conflict"
	CodeStaleSession = "stale_session"
)

// ProtocolVersion is reported in the hello response.
const ProtocolVersion = 1

// ExecRequest describes a command to run in the instance root.
type ExecRequest struct {
	Argv []string          `json:"argv"`
	Env  map[string]string `json:"env,omitempty"`  // added to the instance's env
	Cwd  string            `json:"cwd,omitempty"`  // default: the instance's working dir
	User string            `json:"user,omitempty"` // default: the instance's user
	TTY  bool              `json:"tty,omitempty"`
	// Initial window size (TTY only).
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
	// Timeout kills the command (and its process group) when it expires;
	// zero means none.
	Timeout time.Duration `json:"timeout,omitempty"`
}

// ExecResult is how an exec ended.
type ExecResult struct {
	// ExitCode is the exit code, 128+N for signal N, 126/127 when the command
	// could not be executed.
	ExitCode int `json:"exit_code"`
	// Message describes the end: "exited with code 0", "killed by signal 9
	// (SIGKILL)", "command not found: foo", "timed out after 1s: ...".
	Message  string `json:"message"`
	TimedOut bool   `json:"timed_out,omitempty"`
}

// FileInfo is the result of a stat. Mode is a Go fs.FileMode. The final
// path component is not followed (lstat): a symlink reports LinkTarget.
type FileInfo struct {
	Exists     bool        `json:"exists"`
	Mode       os.FileMode `json:"mode"`
	Size       int64       `json:"size"`
	IsDir      bool        `json:"is_dir"`
	LinkTarget string      `json:"link_target,omitempty"`
	ModTime    time.Time   `json:"mtime"`
}

// PutKind is what a put creates.
type PutKind string

const (
	PutFile    PutKind = "file"    // a regular file; its bytes follow as data frames
	PutDir     PutKind = "dir"     // a directory (and missing parents)
	PutSymlink PutKind = "symlink" // a symbolic link to LinkTarget
)

// PutRequest creates one entry at an absolute guest path (op put). Missing
// parent directories are created (0755). A file is written through a
// symlink in the final component (resolved inside the guest root); a
// symlink replaces whatever non-directory is there.
type PutRequest struct {
	Path       string  `json:"path"`
	Kind       PutKind `json:"kind"`
	LinkTarget string  `json:"link_target,omitempty"`
	// Mode holds Unix permission bits (0o7777, setuid/setgid/sticky
	// included). Zero keeps an existing entry's mode and gives a new one
	// 0644 (file) or 0755 (directory).
	Mode uint32 `json:"mode,omitempty"`
	// UID and GID are applied when either is non-zero.
	UID uint32 `json:"uid,omitempty"`
	GID uint32 `json:"gid,omitempty"`
	// Mtime (Unix seconds) is applied when non-zero (not to symlinks).
	Mtime int64 `json:"mtime,omitempty"`
}

// TreeRequest asks for a file or directory tree (op read_tree). Without
// FollowLinks a symlink is sent as a link; with it, symlinks (the source
// and entries inside it) are resolved inside the guest root and sent as
// what they point to (a directory reached that way is sent empty, which
// also keeps cycles out), and a dangling one is sent as a link.
type TreeRequest struct {
	Path        string `json:"path"`
	FollowLinks bool   `json:"follow_links,omitempty"`
}

// TreeEntry is one header frame of a read_tree, in walk order (a directory
// before its contents). A regular file's Size bytes follow as data frames.
type TreeEntry struct {
	// Path is relative to the source and slash-separated: "." is the
	// source itself, "a.txt" and "sub/b.txt" are inside it.
	Path       string `json:"path"`
	Mode       uint32 `json:"mode"` // Unix permission bits (0o7777)
	IsDir      bool   `json:"is_dir,omitempty"`
	IsSymlink  bool   `json:"is_symlink,omitempty"`
	LinkTarget string `json:"link_target,omitempty"`
	Size       int64  `json:"size,omitempty"`
	Mtime      int64  `json:"mtime"`
	UID        uint32 `json:"uid,omitempty"`
	GID        uint32 `json:"gid,omitempty"`
}

// Regular reports whether data frames follow the entry.
func (e TreeEntry) Regular() bool { return !e.IsDir && !e.IsSymlink }

// WindowSize is a terminal size.
type WindowSize struct {
	Rows uint16
	Cols uint16
}

// Frame types.
const (
	frameStdin      byte = 1  // client → server: stdin bytes
	frameStdinClose byte = 2  // client → server: stdin EOF
	frameResize     byte = 3  // client → server: rows, cols (2×uint16 BE)
	frameSignal     byte = 4  // client → server: signal number (1 byte)
	frameStdout     byte = 5  // server → client
	frameStderr     byte = 6  // server → client
	frameExit       byte = 7  // server → client: JSON ExecResult, last frame
	frameData       byte = 8  // copy payload, either direction
	frameEnd        byte = 9  // copy end: JSON Response, either direction
	frameHeader     byte = 10 // read_tree: JSON TreeEntry, server → client
)

// maxFrame bounds a frame's payload; larger writes are split.
const maxFrame = 32 << 10

// errFrameTooLarge is returned for a frame above the limit (a corrupt or
// hostile peer).
var errFrameTooLarge = errors.New("agent: frame too large")

// frameWriter writes frames; safe for concurrent use.
type frameWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (fw *frameWriter) frame(typ byte, payload []byte) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	buf := make([]byte, 5+len(payload))
	buf[0] = typ
	binary.BigEndian.PutUint32(buf[1:5], uint32(len(payload)))
	copy(buf[5:], payload)
	_, err := fw.w.Write(buf)
	return err
}

func (fw *frameWriter) json(typ byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return fw.frame(typ, b)
}

// dataWriter turns Write calls into frames of one type.
type dataWriter struct {
	fw  *frameWriter
	typ byte
}

func (d dataWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		chunk := p
		if len(chunk) > maxFrame {
			chunk = chunk[:maxFrame]
		}
		if err := d.fw.frame(d.typ, chunk); err != nil {
			return n, err
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}

// readFrame reads one frame.
func readFrame(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxFrame {
		return 0, nil, fmt.Errorf("%w: %d bytes", errFrameTooLarge, n)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return hdr[0], payload, nil
}
