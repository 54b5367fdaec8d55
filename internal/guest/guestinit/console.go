package guestinit

import (
	"io"
	"sync"
)

// Console serializes everything written to the serial console (the
// instance's log) and remembers whether the last byte ended a line, so that
// marker lines always start at the beginning of a line even when the program
// did not end its output with a newline.
type Console struct {
	mu          sync.Mutex
	w           io.Writer
	atLineStart bool
}

// NewConsole wraps w (normally /dev/console).
func NewConsole(w io.Writer) *Console { return &Console{w: w, atLineStart: true} }

// Write writes program output as is.
func (c *Console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.write(p)
}

func (c *Console) write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, err := c.w.Write(p)
	if n > 0 {
		c.atLineStart = p[n-1] == '\n'
	}
	return n, err
}

// Line writes s as a line of its own, first ending any unterminated line.
func (c *Console) Line(s string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	buf := make([]byte, 0, len(s)+2)
	if !c.atLineStart {
		buf = append(buf, '\n')
	}
	buf = append(buf, s...)
	buf = append(buf, '\n')
	_, _ = c.write(buf)
}

// kmsgWriter turns each write (one slog record) into one kernel log message
// at level info. With "quiet" on the kernel command line these stay out of
// the serial log (which belongs to the program) but appear in dmesg.
type kmsgWriter struct {
	w io.Writer
}

func (k kmsgWriter) Write(p []byte) (int, error) {
	msg := make([]byte, 0, len(p)+24)
	msg = append(msg, "<6>hypeman-init: "...)
	msg = append(msg, p...)
	if _, err := k.w.Write(msg); err != nil {
		return 0, err
	}
	return len(p), nil
}
