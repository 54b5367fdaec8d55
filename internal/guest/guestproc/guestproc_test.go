package guestproc

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const passwdText = `root:x:0:0:root:/root:/bin/sh
# comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
broken line
bad:x:notanumber:1::/:/bin/sh
app:x:1000:1001:App:/home/app:/bin/sh
nohome:x:1002:1002:::/bin/sh
`

const groupText = `root:x:0:
wheel:x:10:app,other
staff:x:50: app
app:x:1001:
bad:x:zz:app
`

func parseDBs(t *testing.T) ([]PasswdEntry, []GroupEntry) {
	t.Helper()
	p, err := ParsePasswd(strings.NewReader(passwdText))
	require.NoError(t, err)
	g, err := ParseGroup(strings.NewReader(groupText))
	require.NoError(t, err)
	return p, g
}

func TestParsePasswdSkipsMalformed(t *testing.T) {
	p, g := parseDBs(t)
	var names []string
	for _, e := range p {
		names = append(names, e.Name)
	}
	assert.Equal(t, []string{"root", "daemon", "app", "nohome"}, names)
	assert.Equal(t, PasswdEntry{Name: "app", UID: 1000, GID: 1001, Home: "/home/app", Shell: "/bin/sh"}, p[2])
	require.Len(t, g, 4)
	assert.Equal(t, []string{"app"}, g[2].Members)
}

func TestLookupUser(t *testing.T) {
	p, g := parseDBs(t)
	cases := []struct {
		spec string
		want User
	}{
		{"", User{Name: "root", UID: 0, GID: 0, Home: "/root"}},
		{"root", User{Name: "root", UID: 0, GID: 0, Home: "/root"}},
		{"app", User{Name: "app", UID: 1000, GID: 1001, Groups: []uint32{10, 50}, Home: "/home/app"}},
		{"1000", User{Name: "app", UID: 1000, GID: 1001, Groups: []uint32{10, 50}, Home: "/home/app"}},
		{"1000:10", User{Name: "app", UID: 1000, GID: 10, Groups: []uint32{10, 50}, Home: "/home/app"}},
		{"app:staff", User{Name: "app", UID: 1000, GID: 50, Groups: []uint32{10, 50}, Home: "/home/app"}},
		{"4242", User{UID: 4242, GID: 0, Home: "/"}},
		{"4242:77", User{UID: 4242, GID: 77, Home: "/"}},
		{"nohome", User{Name: "nohome", UID: 1002, GID: 1002, Home: "/"}},
	}
	for _, c := range cases {
		got, err := LookupUser(c.spec, p, g)
		require.NoError(t, err, c.spec)
		assert.Equal(t, c.want, got, c.spec)
	}
	for _, bad := range []string{"nobody", "app:nogroup", "app:", ":10"} {
		_, err := LookupUser(bad, p, g)
		assert.Error(t, err, bad)
	}
	_, err := LookupUser("nobody", p, g)
	assert.ErrorIs(t, err, ErrUnknownUser)
	assert.EqualError(t, err, "unable to find user nobody: no matching entries in /etc/passwd")
	_, err = LookupUser("app:nogroup", p, g)
	assert.ErrorIs(t, err, ErrUnknownGroup)
}

// makeRoot builds a fake image root in a temp dir.
func makeRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"usr/bin", "etc", "home/app", "opt/app/bin", "data"} {
		require.NoError(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	require.NoError(t, os.Symlink("usr/bin", filepath.Join(root, "bin")))
	write := func(name, content string, mode os.FileMode) {
		require.NoError(t, os.WriteFile(filepath.Join(root, name), []byte(content), mode))
	}
	write("usr/bin/busybox", "#!/bin/true\n", 0o755)
	write("usr/bin/notexec", "data", 0o644)
	write("opt/app/bin/tool", "x", 0o755)
	write("etc/passwd", passwdText, 0o644)
	write("etc/group", groupText, 0o644)
	// Absolute symlinks must be re-rooted, not followed on the host.
	require.NoError(t, os.Symlink("/bin/busybox", filepath.Join(root, "usr/bin/sh")))
	require.NoError(t, os.Symlink("/etc", filepath.Join(root, "data/etclink")))
	require.NoError(t, os.Symlink("../../../../../../etc/passwd", filepath.Join(root, "data/escape")))
	require.NoError(t, os.Symlink("loop2", filepath.Join(root, "data/loop1")))
	require.NoError(t, os.Symlink("loop1", filepath.Join(root, "data/loop2")))
	return root
}

func TestResolveInRoot(t *testing.T) {
	root := makeRoot(t)
	cases := map[string]string{
		"/bin/sh":                  "/usr/bin/busybox",
		"bin/sh":                   "/usr/bin/busybox",
		"/data/etclink/passwd":     "/etc/passwd",
		"/data/escape":             "/etc/passwd", // ".." stops at the root
		"/../../etc/passwd":        "/etc/passwd",
		"/missing/../x/y":          "/x/y",
		"/usr/bin/busybox/../..":   "/usr",
		"/data/etclink/../usr/bin": "/usr/bin",
	}
	for in, want := range cases {
		got, err := ResolveInRoot(root, in)
		require.NoError(t, err, in)
		assert.Equal(t, filepath.Join(root, want), got, in)
	}
	got, err := ResolveParentInRoot(root, "/bin/sh")
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(root, "usr/bin/sh"), got)

	_, err = ResolveInRoot(root, "/data/loop1")
	assert.ErrorIs(t, err, syscall.ELOOP)
}

func TestLookPath(t *testing.T) {
	root := makeRoot(t)
	path := "/usr/local/bin:/bin:/opt/app/bin"
	got, err := LookPath(root, "sh", path, "/")
	require.NoError(t, err)
	assert.Equal(t, "/bin/sh", got)
	got, err = LookPath(root, "tool", path, "/")
	require.NoError(t, err)
	assert.Equal(t, "/opt/app/bin/tool", got)
	got, err = LookPath(root, "./bin/tool", path, "/opt/app")
	require.NoError(t, err)
	assert.Equal(t, "/opt/app/bin/tool", got)
	got, err = LookPath(root, "tool", "", "/opt/app/bin") // empty entry = cwd
	require.NoError(t, err)
	assert.Equal(t, "/opt/app/bin/tool", got)

	var ce *CommandError
	_, err = LookPath(root, "nope", path, "/")
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, 127, ce.ExitCode())
	assert.Equal(t, "command not found: nope", err.Error())

	_, err = LookPath(root, "notexec", path, "/")
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, 126, ce.ExitCode())
	assert.Equal(t, "permission denied: notexec", err.Error())

	_, err = LookPath(root, "/etc", path, "/") // a directory
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, 126, ce.ExitCode())

	_, err = LookPath(root, "/usr/bin/missing", path, "/")
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, 127, ce.ExitCode())
}

func TestBuildEnv(t *testing.T) {
	env := BuildEnv(EnvDefaults{Home: "/root", Hostname: "h1"},
		map[string]string{"A": "1", "HOME": "/x"}, map[string]string{"A": "2"})
	assert.Equal(t, []string{"A=2", "HOME=/x", "HOSTNAME=h1", "PATH=" + DefaultPath}, env)
	v, ok := LookupEnv(env, "A")
	assert.True(t, ok)
	assert.Equal(t, "2", v)
	_, ok = LookupEnv(env, "TERM")
	assert.False(t, ok)
	env = BuildEnv(EnvDefaults{Home: "/", Term: "xterm"}, map[string]string{"PATH": "/bin"})
	assert.Equal(t, []string{"HOME=/", "PATH=/bin", "TERM=xterm"}, env)
}

func TestStartError(t *testing.T) {
	var ce *CommandError
	require.ErrorAs(t, StartError("x", &os.PathError{Op: "fork/exec", Path: "x", Err: syscall.ENOENT}), &ce)
	assert.Equal(t, 127, ce.ExitCode())
	require.ErrorAs(t, StartError("x", syscall.ENOEXEC), &ce)
	assert.Equal(t, 126, ce.ExitCode())
	other := errors.New("boom")
	assert.Equal(t, other, StartError("x", other))
}

// TestReaperAdoptsOrphans makes the test process a child subreaper so the
// shell's background child is reparented to it, and checks that the Reaper
// both delivers the shell's own status and reaps the orphan.
func TestReaperAdoptsOrphans(t *testing.T) {
	require.NoError(t, setSubreaper())
	r := NewReaper()
	var orphans []int
	r.OnOrphan = func(pid int, ws syscall.WaitStatus) { orphans = append(orphans, pid) }

	cmd := exec.Command("/bin/sh", "-c", "sleep 0.2 & exit 3")
	wait, err := r.Start(cmd)
	require.NoError(t, err)
	done := make(chan syscall.WaitStatus, 1)
	go func() { ws, _ := wait(); done <- ws }()
	deadline := time.After(5 * time.Second)
	var ws syscall.WaitStatus
	for got := false; !got; {
		select {
		case ws = <-done:
			got = true
		case <-time.After(20 * time.Millisecond):
			r.Reap()
		case <-deadline:
			t.Fatal("shell status never delivered")
		}
	}
	assert.Equal(t, 3, ws.ExitStatus())
	require.NoError(t, r.WaitAll(5*time.Second))
	r.mu.Lock()
	defer r.mu.Unlock()
	assert.Len(t, orphans, 1, "the background sleep is reaped as an orphan")
}
