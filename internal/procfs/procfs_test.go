package procfs

import (
	"os"
	"testing"
	"time"
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
