package main_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"hypeman/internal/cli"
	"hypeman/internal/testutil/e2e"
	"hypeman/internal/testutil/testimage"
)

// hm runs the real CLI in-process against the e2e daemon.
func hm(t *testing.T, s *e2e.Server, stdin []byte, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	env := map[string]string{"HYPEMAN_BASE_URL": s.BaseURL, "HYPEMAN_API_KEY": s.Token}
	code = cli.Run(context.Background(), args, bytes.NewReader(stdin), &out, &errb, func(k string) string { return env[k] })
	return code, out.String(), errb.String()
}

// Issue 6 through hypemand and the CLI: exec (stdout, exit code, an
// interactive TTY session typed on stdin), cp round trip, cp confinement,
// and exec on a Stopped instance refused with 409.
func TestExecAndCopyThroughCLI(t *testing.T) {
	t.Parallel()
	s := e2e.Start(t)
	pushImage(t, s, "apps/idle:v1", testimage.Options{Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"exec sleep 3600"}})
	if code, _, errs := hm(t, s, nil, "run", "--name", "box", "--memory", "256MB", "--cpus", "1", "apps/idle:v1"); code != 0 {
		t.Fatalf("run: %d %s\n%s", code, errs, s.Logs())
	}

	code, out, errs := hm(t, s, nil, "exec", "box", "--", "echo", "hello from exec")
	if code != 0 || out != "hello from exec\n" {
		t.Fatalf("exec echo: %d %q %q", code, out, errs)
	}
	if code, _, _ = hm(t, s, nil, "exec", "box", "--", "sh", "-c", "exit 7"); code != 7 {
		t.Fatalf("exec exit code %d, want 7", code)
	}
	// Interactive TTY: a shell reads commands typed on stdin.
	code, out, errs = hm(t, s, []byte("echo typed-$((40+2))\nexit 5\n"), "exec", "-i", "-t", "box", "--", "sh")
	if code != 5 || !strings.Contains(out, "typed-42") {
		t.Fatalf("interactive exec: %d %q %q", code, out, errs)
	}

	// cp round trip of a 1 MiB file.
	dir := t.TempDir()
	data := make([]byte, 1<<20)
	rand.Read(data)
	src := filepath.Join(dir, "payload.bin")
	os.WriteFile(src, data, 0o640)
	if code, _, errs := hm(t, s, nil, "cp", src, "box:/tmp/payload.bin"); code != 0 {
		t.Fatalf("cp to: %d %s", code, errs)
	}
	back := filepath.Join(dir, "back.bin")
	if code, _, errs := hm(t, s, nil, "cp", "box:/tmp/payload.bin", back); code != 0 {
		t.Fatalf("cp from: %d %s", code, errs)
	}
	if got, _ := os.ReadFile(back); !bytes.Equal(got, data) {
		t.Fatal("cp round trip changed the file")
	}

	// A tar stream on stdin: absolute names land under the destination,
	// names that climb out of it are refused.
	tarOf := func(names ...string) []byte {
		var tb bytes.Buffer
		tw := tar.NewWriter(&tb)
		for _, name := range names {
			tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: 2, Typeflag: tar.TypeReg})
			tw.Write([]byte("x\n"))
		}
		tw.Close()
		return tb.Bytes()
	}
	if code, _, errs := hm(t, s, tarOf("/abs.txt", "fine.txt"), "cp", "-", "box:/tmp/dest"); code != 0 {
		t.Fatalf("cp - : %d %s", code, errs)
	}
	if code, out, _ = hm(t, s, nil, "exec", "box", "--", "cat", "/tmp/dest/abs.txt", "/tmp/dest/fine.txt"); code != 0 || out != "x\nx\n" {
		t.Fatalf("cp - landed elsewhere: %d %q", code, out)
	}
	for _, names := range [][]string{{"../escaped.txt"}, {"ok/../../escaped2.txt"}} {
		if code, _, errs := hm(t, s, tarOf(names...), "cp", "-", "box:/tmp/dest"); code != 1 || !strings.Contains(errs, "climbs out of the destination") {
			t.Fatalf("cp - %v: %d %q", names, code, errs)
		}
	}
	code, out, _ = hm(t, s, nil, "exec", "box", "--", "sh", "-c", "ls /tmp/escaped.txt /tmp/escaped2.txt 2>/dev/null; true")
	if strings.TrimSpace(out) != "" {
		t.Fatalf("cp wrote outside the destination: %q", out)
	}

	// exec on a Stopped instance: 409 with the allowed actions.
	if code, _, errs := hm(t, s, nil, "stop", "box"); code != 0 {
		t.Fatalf("stop: %s", errs)
	}
	code, _, errs = hm(t, s, nil, "exec", "box", "--", "echo", "no")
	if code == 0 || !strings.Contains(errs, "Stopped") {
		t.Fatalf("exec on stopped: %d %q", code, errs)
	}
	st, body := s.Do("GET", "/instances/box/exec", nil)
	if st != 409 && st != 400 {
		t.Fatalf("GET exec on stopped: %d %s", st, body)
	}
}
