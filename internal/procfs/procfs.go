// Package procfs reads the few /proc facts hypeman needs about processes
// (chiefly VMM processes): state, process group, start time, CPU time, RSS,
// and the proportional memory (PSS) that shows what VMs sharing memory
// really cost.
//
// Why a package: the QEMU driver (pid-reuse checks, process groups) and the
// instance manager (the stats endpoint) read the same /proc/<pid>/stat line,
// whose comm field may contain spaces and ')'. Parsing it once, correctly,
// keeps both from drifting.
package procfs

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ClockTicks is USER_HZ, the unit of utime/stime (100 on Linux/amd64).
const ClockTicks = 100

// Stat is the part of /proc/<pid>/stat hypeman uses.
type Stat struct {
	State     byte   // field 3: R, S, D, Z, ...
	Pgrp      int    // field 5
	UTime     uint64 // field 14, clock ticks
	STime     uint64 // field 15, clock ticks
	StartTime uint64 // field 22, clock ticks since boot
	VSize     uint64 // field 23, bytes of virtual memory
	RSSPages  int64  // field 24
}

// CPUSeconds is user + system CPU time.
func (s Stat) CPUSeconds() float64 { return float64(s.UTime+s.STime) / ClockTicks }

// RSSBytes is the resident set size.
func (s Stat) RSSBytes() int64 { return s.RSSPages * int64(os.Getpagesize()) }

// ParseStat parses a /proc/<pid>/stat line. The comm field (2) is in
// parentheses and may itself contain spaces and ')', so fields are counted
// from the last ')'.
func ParseStat(s string) (Stat, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return Stat{}, errors.New("proc stat: no comm field")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3; field n is f[n-3].
	if len(f) < 22 {
		return Stat{}, fmt.Errorf("proc stat: %d fields after comm", len(f))
	}
	field := func(n int) string { return f[n-3] }
	var st Stat
	var err error
	st.State = field(3)[0]
	if st.Pgrp, err = strconv.Atoi(field(5)); err != nil {
		return Stat{}, fmt.Errorf("proc stat: pgrp: %w", err)
	}
	if st.UTime, err = strconv.ParseUint(field(14), 10, 64); err != nil {
		return Stat{}, fmt.Errorf("proc stat: utime: %w", err)
	}
	if st.STime, err = strconv.ParseUint(field(15), 10, 64); err != nil {
		return Stat{}, fmt.Errorf("proc stat: stime: %w", err)
	}
	if st.StartTime, err = strconv.ParseUint(field(22), 10, 64); err != nil {
		return Stat{}, fmt.Errorf("proc stat: starttime: %w", err)
	}
	if st.VSize, err = strconv.ParseUint(field(23), 10, 64); err != nil {
		return Stat{}, fmt.Errorf("proc stat: vsize: %w", err)
	}
	if st.RSSPages, err = strconv.ParseInt(field(24), 10, 64); err != nil {
		return Stat{}, fmt.Errorf("proc stat: rss: %w", err)
	}
	return st, nil
}

// ReadStat reads and parses /proc/<pid>/stat (os.ErrNotExist when the
// process is gone).
func ReadStat(pid int) (Stat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Stat{}, err
	}
	return ParseStat(string(b))
}

// MemUsage is a process's memory from /proc/<pid>/smaps_rollup, in bytes.
// PSS charges each page divided by the number of processes mapping it, so
// the PSS of a group of processes sums to the memory the group really uses
// (page cache pages nobody maps are not counted): the measure for VMs that
// share their template's memory file.
type MemUsage struct {
	RSS      int64
	PSS      int64
	PSSAnon  int64 // private and copy-on-write copies
	PSSFile  int64 // file pages mapped (a shared memory file, binaries)
	PSSShmem int64 // tmpfs / shared anonymous pages
}

// ParseSmapsRollup parses the content of /proc/<pid>/smaps_rollup. Rss and
// Pss are required; the Pss_* split (Linux 5.7+) is zero when absent.
func ParseSmapsRollup(s string) (MemUsage, error) {
	var u MemUsage
	fields := map[string]*int64{"Rss:": &u.RSS, "Pss:": &u.PSS, "Pss_Anon:": &u.PSSAnon, "Pss_File:": &u.PSSFile, "Pss_Shmem:": &u.PSSShmem}
	seen := 0
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 || f[2] != "kB" {
			continue
		}
		dst, ok := fields[f[0]]
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return MemUsage{}, fmt.Errorf("smaps_rollup: %s %q: %w", f[0], f[1], err)
		}
		*dst = kb << 10
		if f[0] == "Rss:" || f[0] == "Pss:" {
			seen++
		}
	}
	if seen != 2 {
		return MemUsage{}, errors.New("smaps_rollup: no Rss/Pss lines")
	}
	return u, nil
}

// ReadMemUsage reads /proc/<pid>/smaps_rollup (os.ErrNotExist when the
// process is gone). Reading another user's process needs the same
// privileges as ptrace-reading it.
func ReadMemUsage(pid int) (MemUsage, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return MemUsage{}, err
	}
	return ParseSmapsRollup(string(b))
}
