package guestconfig

import "testing"

func TestEncodeDecodeRoundTrip(t *testing.T) {
	c := &Config{Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo hi"}, Env: map[string]string{"A": "b c"}, WorkingDir: "/tmp", User: "1000:1000", RootFS: "erofs"}
	disk, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if len(disk) != ConfigDiskSize {
		t.Fatalf("disk size %d", len(disk))
	}
	got, err := Decode(disk)
	if err != nil {
		t.Fatal(err)
	}
	if got.WorkingDir != "/tmp" || got.Env["A"] != "b c" || len(got.Argv()) != 3 || got.Argv()[2] != "echo hi" {
		t.Fatalf("round trip mismatch: %+v", got)
	}
	if _, err := Decode(make([]byte, 10)); err == nil {
		t.Fatal("empty disk decoded")
	}
}

func TestExitMarker(t *testing.T) {
	for _, e := range []Exit{{0, "exited"}, {137, `killed by signal 9 (SIGKILL) "oom"`}, {127, "command not found: /nope"}} {
		line := FormatExit(e)
		got, ok := ParseExit("partial output" + line + "\r\n")
		if !ok || got != e {
			t.Fatalf("parse %q: got %+v ok=%v", line, got, ok)
		}
	}
	for _, l := range []string{"", "hello", "HYPEMAN-EXIT code=x message=\"\"", "HYPEMAN-EXIT code=1"} {
		if _, ok := ParseExit(l); ok {
			t.Fatalf("parsed %q", l)
		}
	}
}
