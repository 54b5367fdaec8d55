package procfs

import (
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseStat(t *testing.T) {
	// comm with spaces and a ')' must not shift the fields.
	line := "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 3 0 987654 1000000 100 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n"
	st, err := ParseStat(line)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != 'S' || st.Pgrp != 4242 || st.StartTime != 987654 {
		t.Fatalf("got %+v", st)
	}
	if st.UTime != 5 || st.STime != 6 || st.RSSPages != 100 || st.VSize != 1000000 || st.CPUSeconds() != 0.11 {
		t.Fatalf("cpu/rss fields: %+v", st)
	}
	if _, err := ParseStat("1 (x) S 1 2"); err == nil {
		t.Fatal("short stat accepted")
	}
}

func TestReadStatSelfStartTimeStable(t *testing.T) {
	a, err := ReadStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	b, err := ReadStat(os.Getpid())
	if err != nil || a.StartTime != b.StartTime || a.StartTime == 0 {
		t.Fatalf("start time unstable: %+v %+v %v", a, b, err)
	}
	if b.RSSBytes() <= 0 {
		t.Fatalf("rss %d", b.RSSBytes())
	}
}

func TestParseSmapsRollup(t *testing.T) {
	const rollup = `56100d1bf000-7ffe753e6000 ---p 00000000 00:00 0                          [rollup]
Rss:              131072 kB
Pss:               70000 kB
Pss_Dirty:         60000 kB
Pss_Anon:          60000 kB
Pss_File:           9000 kB
Pss_Shmem:          1000 kB
Shared_Clean:      65536 kB
Private_Dirty:     60000 kB
SwapPss:               0 kB
`
	u, err := ParseSmapsRollup(rollup)
	if err != nil {
		t.Fatal(err)
	}
	want := MemUsage{RSS: 131072 << 10, PSS: 70000 << 10, PSSAnon: 60000 << 10, PSSFile: 9000 << 10, PSSShmem: 1000 << 10}
	if u != want {
		t.Fatalf("got %+v, want %+v", u, want)
	}
	if _, err := ParseSmapsRollup("Rss: 12 kB\n"); err == nil {
		t.Fatal("rollup without Pss accepted")
	}
	if _, err := ParseSmapsRollup("Rss: 12 kB\nPss: x kB\n"); err == nil {
		t.Fatal("non-numeric Pss accepted")
	}
}

// Touching 32 MiB of private anonymous memory shows up in this process's
// PSS (anon) and RSS.
func TestReadMemUsageSeesTouchedMemory(t *testing.T) {
	before, err := ReadMemUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	const n = 32 << 20
	mem, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	for i := 0; i < n; i += 4096 {
		mem[i] = 1
	}
	after, err := ReadMemUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if grew := after.PSSAnon - before.PSSAnon; grew < n*9/10 {
		t.Fatalf("anon PSS grew %d bytes after touching %d: before %+v after %+v", grew, n, before, after)
	}
	if after.PSS > after.RSS || after.RSS-before.RSS < n*9/10 {
		t.Fatalf("before %+v after %+v", before, after)
	}
}
