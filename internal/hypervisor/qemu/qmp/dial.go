package qmp

import (
	"context"
	"fmt"
	"net"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// MaxUnixPath is the longest path that fits in sockaddr_un.sun_path (108
// bytes including the terminating NUL on Linux).
const MaxUnixPath = 107

// DialUnix connects to the unix stream socket at path. Paths longer than
// MaxUnixPath (deep instance or test temp dirs) are reached through the
// directory's /proc/self/fd entry, which keeps the address short while the
// kernel still resolves the real directory.
func DialUnix(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	if len(path) <= MaxUnixPath {
		return d.DialContext(ctx, "unix", path)
	}
	dir, base := filepath.Split(path)
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dial %s: open dir: %w", path, err)
	}
	defer unix.Close(fd)
	short := fmt.Sprintf("/proc/self/fd/%d/%s", fd, base)
	if len(short) > MaxUnixPath {
		return nil, fmt.Errorf("dial %s: socket name too long", path)
	}
	c, err := d.DialContext(ctx, "unix", short)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", path, err)
	}
	return c, nil
}
