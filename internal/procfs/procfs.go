// Package procfs reads the few /proc facts hypeman needs about processes
// (chiefly VMM processes): state, process group, start time, CPU time, RSS.
//
// Why a package: the QEMU driver (pid-reuse checks, process groups) and the
// instance manager (the stats endpoint) read the same /proc/<pid>/stat line,
// whose comm field may contain spaces and ')'. Parsing it once, correctly,
// keeps both from drifting.
package procfs

import (
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
