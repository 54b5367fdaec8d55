package system

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"hypeman/internal/testutil/tier"
)

func sampleEntries() []cpioEntry {
	return []cpioEntry{
		{Name: "dev", Mode: modeDir | 0o755},
		{Name: "dev/console", Mode: modeChr | 0o600, RdevMajor: 5, RdevMinor: 1},
		{Name: "etc", Mode: modeDir | 0o755, Mtime: 1700000000},
		{Name: "etc/a", Mode: modeReg | 0o644, Data: []byte("x")},     // name/data needing padding
		{Name: "etc/bb", Mode: modeReg | 0o600, Data: []byte("abcd")}, // aligned data
		{Name: "etc/empty", Mode: modeReg | 0o644},
		{Name: "etc/link", Mode: modeLink | 0o777, Data: []byte("bb")},
		{Name: "init", Mode: modeReg | 0o755, UID: 1, GID: 2, Data: bytes.Repeat([]byte{0, 1, 2}, 1001)},
	}
}

func TestCPIORoundTrip(t *testing.T) {
	var buf bytes.Buffer
	cw := newCPIOWriter(&buf)
	for _, e := range sampleEntries() {
		if err := cw.WriteEntry(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := cw.Close(); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Fatalf("archive length %d not 4-aligned", buf.Len())
	}
	got, err := readCPIO(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	want := sampleEntries()
	for i := range want {
		if want[i].Data == nil {
			want[i].Data = []byte{}
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip mismatch:\n got %+v\nwant %+v", got, want)
	}
	if _, err := readCPIO(bytes.NewReader(buf.Bytes()[:buf.Len()-200])); err == nil {
		t.Fatal("truncated archive read without error")
	}
	bad := append([]byte{}, buf.Bytes()...)
	bad[0] = 'X'
	if _, err := readCPIO(bytes.NewReader(bad)); err == nil {
		t.Fatal("bad magic accepted")
	}
	for _, name := range []string{"", "/abs", cpioTrailer} {
		if err := newCPIOWriter(&bytes.Buffer{}).WriteEntry(cpioEntry{Name: name}); err == nil {
			t.Fatalf("name %q accepted", name)
		}
	}
}

// Cross-check with GNU cpio (an independent implementation): it must list
// our archive and extract file contents byte-exactly.
func TestCPIOReadableByGNUCpio(t *testing.T) {
	tier.Tools(t, "cpio")
	var buf bytes.Buffer
	cw := newCPIOWriter(&buf)
	for _, e := range sampleEntries() {
		if err := cw.WriteEntry(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := cw.Close(); err != nil {
		t.Fatal(err)
	}
	arch := filepath.Join(t.TempDir(), "a.cpio")
	if err := os.WriteFile(arch, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("sh", "-c", "cpio -it --quiet < "+arch).CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v: %s", err, out)
	}
	var wantNames []string
	for _, e := range sampleEntries() {
		wantNames = append(wantNames, e.Name)
	}
	if got := strings.Fields(string(out)); strings.Join(got, " ") != strings.Join(wantNames, " ") {
		t.Fatalf("cpio -t lists %v, want %v", got, wantNames)
	}
	content, err := exec.Command("sh", "-c", "cpio -i --quiet --to-stdout init < "+arch).Output()
	if err != nil {
		t.Fatalf("cpio --to-stdout: %v", err)
	}
	if !bytes.Equal(content, sampleEntries()[7].Data) {
		t.Fatalf("cpio extracted %d bytes of init, want %d", len(content), len(sampleEntries()[7].Data))
	}
	verbose, err := exec.Command("sh", "-c", "cpio -itv --quiet < "+arch).Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(verbose), "crw-------") || !strings.Contains(string(verbose), "etc/link -> bb") {
		t.Fatalf("cpio -tv does not show the device node / symlink:\n%s", verbose)
	}
}
