package qemu

const haveRDTSC = true

// rdtsc returns the time-stamp counter (LFENCE-ordered). Implemented in
// rdtsc_amd64.s.
func rdtsc() uint64
