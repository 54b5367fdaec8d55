package guestproc

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"
)

// Exit codes with Docker's meaning for a program that could not be started.
const (
	ExitCodeNotExecutable = 126
	ExitCodeNotFound      = 127
)

// Sentinel causes of a CommandError.
var (
	ErrCommandNotFound = errors.New("command not found")
	ErrNotExecutable   = errors.New("permission denied")
)

// CommandError says why argv[0] could not be executed.
type CommandError struct {
	Command string
	Err     error // ErrCommandNotFound or ErrNotExecutable
}

func (e *CommandError) Error() string { return e.Err.Error() + ": " + e.Command }
func (e *CommandError) Unwrap() error { return e.Err }

// ExitCode is 127 for a missing command and 126 otherwise.
func (e *CommandError) ExitCode() int {
	if errors.Is(e.Err, ErrCommandNotFound) {
		return ExitCodeNotFound
	}
	return ExitCodeNotExecutable
}

// DefaultPath is the PATH used when the environment sets none (Docker's).
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// LookPath finds file as a process chrooted into root with working directory
// cwd would: a name containing "/" is taken as is (relative to cwd), otherwise
// each PATH entry is tried in order (an empty entry means cwd). It returns the
// path inside the root to pass to execve. Like execvp, a non-executable match
// does not stop the search but, if nothing better is found, the result is
// ErrNotExecutable rather than ErrCommandNotFound.
func LookPath(root, file, pathEnv, cwd string) (string, error) {
	if file == "" {
		return "", &CommandError{Command: file, Err: ErrCommandNotFound}
	}
	if cwd == "" {
		cwd = "/"
	}
	abs := func(p string) string {
		if path.IsAbs(p) {
			return path.Clean(p)
		}
		return path.Join(cwd, p)
	}
	if strings.Contains(file, "/") {
		if err := checkExecutable(root, abs(file)); err != nil {
			return "", &CommandError{Command: file, Err: err}
		}
		return abs(file), nil
	}
	var denied bool
	for _, dir := range strings.Split(pathEnv, ":") {
		if dir == "" {
			dir = "."
		}
		cand := abs(path.Join(dir, file))
		err := checkExecutable(root, cand)
		if err == nil {
			return cand, nil
		}
		if errors.Is(err, ErrNotExecutable) {
			denied = true
		}
	}
	if denied {
		return "", &CommandError{Command: file, Err: ErrNotExecutable}
	}
	return "", &CommandError{Command: file, Err: ErrCommandNotFound}
}

// checkExecutable returns nil, ErrCommandNotFound or ErrNotExecutable.
func checkExecutable(root, p string) error {
	host, err := ResolveInRoot(root, p)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return ErrNotExecutable
		}
		return ErrCommandNotFound
	}
	fi, err := os.Stat(host)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return ErrCommandNotFound
		}
		return fmt.Errorf("%w (%v)", ErrNotExecutable, err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return ErrNotExecutable
	}
	return nil
}

// StartError classifies an error from starting a process whose path was
// already found: ENOENT (e.g. a missing #! interpreter) is "not found",
// everything else (EACCES, ENOEXEC, ...) is "not executable". Other errors are
// returned unchanged.
func StartError(command string, err error) error {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return err
	}
	switch errno {
	case syscall.ENOENT, syscall.ENOTDIR:
		return &CommandError{Command: command, Err: ErrCommandNotFound}
	case syscall.EACCES, syscall.EPERM, syscall.ENOEXEC, syscall.EISDIR, syscall.ELOOP:
		return &CommandError{Command: command, Err: ErrNotExecutable}
	}
	return err
}
