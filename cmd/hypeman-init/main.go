// Command hypeman-init is the guest init (PID 1) placed at /init in the
// initrd. It is built static (CGO_ENABLED=0); all logic lives in
// internal/guest/guestinit.
package main

import "hypeman/internal/guest/guestinit"

func main() { guestinit.Main() }
