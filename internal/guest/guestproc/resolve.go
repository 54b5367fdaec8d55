package guestproc

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
)

// maxSymlinks bounds symlink resolution like the kernel does (ELOOP).
const maxSymlinks = 40

// ResolveInRoot resolves p (an absolute path as seen inside root, or relative
// to "/") the way a process chrooted into root would: "." and ".." never climb
// above root and absolute symlink targets are re-rooted. It returns the host
// path (root joined with the resolved path). Missing components are not an
// error: the rest of the path is appended lexically and the caller's later
// stat/open reports ENOENT. The final component's symlink is followed.
func ResolveInRoot(root, p string) (string, error) {
	in, err := resolve(root, p, true)
	if err != nil {
		return "", err
	}
	return filepath.Join(root, in), nil
}

// ResolveParentInRoot is ResolveInRoot without following a symlink in the
// final component (lstat semantics).
func ResolveParentInRoot(root, p string) (string, error) {
	in, err := resolve(root, p, false)
	if err != nil {
		return "", err
	}
	return filepath.Join(root, in), nil
}

// resolve returns the resolved path inside root, always absolute and clean.
func resolve(root, p string, followLast bool) (string, error) {
	pending := splitPath(p)
	cur := "/"
	hops := 0
	for len(pending) > 0 {
		comp := pending[0]
		pending = pending[1:]
		switch comp {
		case ".":
			continue
		case "..":
			cur = path.Dir(cur)
			continue
		}
		next := path.Join(cur, comp)
		last := len(pending) == 0
		fi, err := os.Lstat(filepath.Join(root, next))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				// Nothing below a missing component can be a symlink.
				rest := append([]string{next}, pending...)
				return path.Clean(path.Join(rest...)), nil
			}
			return "", fmt.Errorf("resolve %s: %w", p, err)
		}
		if fi.Mode()&fs.ModeSymlink == 0 || (last && !followLast) {
			cur = next
			continue
		}
		hops++
		if hops > maxSymlinks {
			return "", &fs.PathError{Op: "resolve", Path: p, Err: syscall.ELOOP}
		}
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", fmt.Errorf("resolve %s: %w", p, err)
		}
		if strings.HasPrefix(target, "/") {
			cur = "/"
		}
		pending = append(splitPath(target), pending...)
	}
	return cur, nil
}

func splitPath(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" {
			out = append(out, c)
		}
	}
	return out
}
