package guestinit

import (
	"context"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// The ACPI power button (QMP system_powerdown) reaches the guest as a key
// press on an input device named "Power Button" (drivers "button" and
// "evdev", modules in Debian's kernel). The init treats it like SIGTERM to
// PID 1: a graceful stop. Without the modules in the initrd there is no such
// device and the host's fallback after its timeout is a hard kill.

// Linux input event constants (linux/input-event-codes.h).
const (
	evKey         = 1
	keyPower      = 116
	inputEventLen = 24 // struct input_event on 64-bit: timeval(16) type(2) code(2) value(4)
)

// FindPowerButtons returns the event device paths (under devInput) of the
// input devices called "Power Button" listed in sysInput
// (/sys/class/input).
func FindPowerButtons(sysInput, devInput string) []string {
	ents, err := os.ReadDir(sysInput)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "event") {
			continue
		}
		name, err := os.ReadFile(filepath.Join(sysInput, e.Name(), "device", "name"))
		if err == nil && strings.TrimSpace(string(name)) == "Power Button" {
			out = append(out, filepath.Join(devInput, e.Name()))
		}
	}
	return out
}

// isPowerPress reports whether one input_event is a power key press.
func isPowerPress(ev []byte) bool {
	if len(ev) != inputEventLen {
		return false
	}
	typ := binary.LittleEndian.Uint16(ev[16:18])
	code := binary.LittleEndian.Uint16(ev[18:20])
	value := int32(binary.LittleEndian.Uint32(ev[20:24]))
	return typ == evKey && code == keyPower && value == 1
}

// watchPowerButton calls onPress for every power key press read from r
// until r fails.
func watchPowerButton(r io.Reader, onPress func()) {
	ev := make([]byte, inputEventLen)
	for {
		if _, err := io.ReadFull(r, ev); err != nil {
			return
		}
		if isPowerPress(ev) {
			onPress()
		}
	}
}

// watchPowerButtons watches every power button device until ctx is done.
func watchPowerButtons(ctx context.Context, paths []string, onPress func()) {
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		context.AfterFunc(ctx, func() { f.Close() })
		go watchPowerButton(f, onPress)
	}
}
