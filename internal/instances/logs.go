package instances

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/hypervisor"
	"hypeman/internal/rotlog"
)

// LogSource selects one of an instance's logs.
type LogSource string

const (
	LogApp     LogSource = "app"     // guest console: the program's stdout/stderr
	LogVMM     LogSource = "vmm"     // the VMM process's own output
	LogHypeman LogSource = "hypeman" // what the daemon did to the instance
)

// ParseLogSource validates a source name ("" = app).
func ParseLogSource(s string) (LogSource, error) {
	switch LogSource(s) {
	case "", LogApp:
		return LogApp, nil
	case LogVMM, LogHypeman:
		return LogSource(s), nil
	}
	return "", &InvalidArgumentError{Field: "source", Reason: fmt.Sprintf("%q is not one of app, vmm, hypeman", s)}
}

// LogOptions selects what StreamLogs sends.
type LogOptions struct {
	Source LogSource
	// Tail is how many existing lines to send first (0 = none, <0 = all).
	Tail int
	// Follow keeps streaming new lines until ctx ends or the instance's VM
	// is gone and everything it wrote has been sent (like docker logs -f).
	// Tail and follow read across rotated serial log files (package
	// rotlog); lines longer than rotlog.MaxLine come in pieces.
	Follow bool
}

// MaxTail bounds how many lines a tail request may ask for.
const MaxTail = 100000

func logFile(dir string, s LogSource) string {
	switch s {
	case LogVMM:
		return filepath.Join(dir, hypervisor.VMMLogName)
	case LogHypeman:
		return filepath.Join(dir, hypemanLog)
	}
	return filepath.Join(dir, hypervisor.SerialLogName)
}

// StreamLogs sends log lines (without the trailing newline) to fn.
func (m *Manager) StreamLogs(ctx context.Context, ref string, opts LogOptions, fn func(line string) error) error {
	e, err := m.resolve(ref)
	if err != nil {
		return err
	}
	if opts.Tail > MaxTail {
		return &InvalidArgumentError{Field: "tail", Reason: fmt.Sprintf("at most %d", MaxTail)}
	}
	e.mu.Lock()
	id := e.meta.ID
	e.mu.Unlock()
	path := logFile(m.dir(id), opts.Source)
	// The app log is the guest console: the init's marker lines are our
	// protocol, not the program's output, so they are not shown (the
	// hypeman source records the same events in words).
	show := func(string) bool { return true }
	extra := 0
	if opts.Source == LogApp || opts.Source == "" {
		show = func(l string) bool { return !isMarkerLine(l) }
		extra = 8 // a few boots' markers, so a tail still yields Tail lines
	}
	want := opts.Tail
	if want > 0 {
		want += extra
	}
	lines, end, partial, err := rotlog.Tail(path, want)
	if err != nil {
		return err
	}
	if partial && opts.Follow {
		// Unfinished: the follower sends it once, when it is complete.
		lines = lines[:len(lines)-1]
	}
	var kept []string
	for _, l := range lines {
		if l = strings.TrimRight(l, "\r"); show(l) {
			kept = append(kept, l)
		}
	}
	if opts.Tail > 0 && len(kept) > opts.Tail {
		kept = kept[len(kept)-opts.Tail:]
	}
	for _, l := range kept {
		if err := fn(l); err != nil {
			return err
		}
	}
	if !opts.Follow {
		return nil
	}
	// The follower reads on from end across rotations of the log.
	r := rotlog.NewReader(path, end)
	defer r.Close()
	var sendErr error
	send := func(b []byte) {
		l := strings.TrimRight(string(b), "\r\n")
		if sendErr == nil && show(l) {
			sendErr = fn(l)
		}
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		e.mu.Lock()
		live, deleted := e.live != nil, e.deleted
		e.mu.Unlock()
		if err := r.Poll(send); err != nil {
			return err
		}
		if sendErr != nil {
			return sendErr
		}
		if deleted || !live {
			r.Flush(send)
			return sendErr
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// isMarkerLine reports whether a console line is one of the guest init's
// protocol markers (a whole line; a program line merely containing the
// text is kept).
func isMarkerLine(l string) bool {
	l = strings.TrimRight(l, "\r\n")
	return l == guestconfig.MarkerProgramStart || l == guestconfig.MarkerAgentReady ||
		strings.HasPrefix(l, guestconfig.MarkerExitPrefix+"code=")
}
