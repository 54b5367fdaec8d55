package guestproc

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"slices"
	"syscall"
)

// EnvDefaults are the values added to an environment when it does not set
// them itself.
type EnvDefaults struct {
	Home     string // HOME
	Hostname string // HOSTNAME, skipped when empty
	Term     string // TERM, skipped when empty (set for TTY sessions only)
}

// BuildEnv merges layers (later layers win), adds PATH/HOME/HOSTNAME/TERM
// when unset, and returns KEY=VALUE pairs sorted by key so the result is
// deterministic.
func BuildEnv(d EnvDefaults, layers ...map[string]string) []string {
	env := map[string]string{}
	for _, l := range layers {
		maps.Copy(env, l)
	}
	setDefault := func(k, v string) {
		if _, ok := env[k]; !ok && v != "" {
			env[k] = v
		}
	}
	setDefault("PATH", DefaultPath)
	setDefault("HOME", d.Home)
	setDefault("HOSTNAME", d.Hostname)
	setDefault("TERM", d.Term)
	out := make([]string, 0, len(env))
	for _, k := range slices.Sorted(maps.Keys(env)) {
		out = append(out, k+"="+env[k])
	}
	return out
}

// LookupEnv returns the value of key in a KEY=VALUE list.
func LookupEnv(env []string, key string) (string, bool) {
	for _, kv := range env {
		if len(kv) > len(key) && kv[len(key)] == '=' && kv[:len(key)] == key {
			return kv[len(key)+1:], true
		}
	}
	return "", false
}

// Spec describes a process to run inside a root.
type Spec struct {
	Root string   // host path of the directory to chroot into
	Argv []string // argv; Argv[0] is looked up on the environment's PATH
	Env  []string // final environment (see BuildEnv)
	Cwd  string   // working directory inside the root, default "/"
	User User
	// Setsid puts the process in a new session (and process group), so a
	// whole tree can be signalled and it has no controlling terminal unless
	// Setctty is set.
	Setsid bool
	// Setctty makes Stdin (which must be a terminal) the controlling tty.
	Setctty bool
}

// ErrNoCwd is returned (wrapped) when the working directory does not exist.
var ErrNoCwd = errors.New("working directory does not exist")

// Command resolves argv[0] inside the root and returns a command ready to
// start (stdio left to the caller). A missing or non-executable command is a
// *CommandError carrying the Docker exit code.
func Command(s Spec) (*exec.Cmd, error) {
	if len(s.Argv) == 0 {
		return nil, &CommandError{Command: "", Err: ErrCommandNotFound}
	}
	cwd := s.Cwd
	if cwd == "" {
		cwd = "/"
	}
	host, err := ResolveInRoot(s.Root, cwd)
	if err != nil {
		return nil, fmt.Errorf("working directory %s: %w", cwd, err)
	}
	if fi, err := os.Stat(host); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("%w: %s", ErrNoCwd, cwd)
	}
	pathEnv, ok := LookupEnv(s.Env, "PATH")
	if !ok {
		pathEnv = DefaultPath
	}
	exe, err := LookPath(s.Root, s.Argv[0], pathEnv, cwd)
	if err != nil {
		return nil, err
	}
	cmd := &exec.Cmd{
		Path: exe,
		Args: slices.Clone(s.Argv),
		Env:  slices.Clone(s.Env),
		Dir:  cwd,
		SysProcAttr: &syscall.SysProcAttr{
			Chroot:  s.Root,
			Setsid:  s.Setsid,
			Setctty: s.Setctty,
			Credential: &syscall.Credential{
				Uid:    s.User.UID,
				Gid:    s.User.GID,
				Groups: s.User.Groups,
			},
		},
	}
	if cmd.Env == nil {
		cmd.Env = []string{} // never inherit the init's environment
	}
	return cmd, nil
}
