// Package sse parses text/event-stream bodies (server-sent events) on the
// client side. hypemand streams logs and lifecycle events this way; both the
// hypeman CLI and hypeman-kubelet read them, so the framing rules live once,
// here, next to the generated client whose raw responses they parse.
package sse

import (
	"bufio"
	"bytes"
	"io"
	"strings"
)

// Event is one dispatched server-sent event.
type Event struct {
	ID   string // the last event ID in effect when it was dispatched
	Type string // "message" when the stream named none
	Data string // data fields joined with "\n"
}

// Reader parses a text/event-stream body following the WHATWG rules the
// client side needs: lines end in LF, CRLF or CR; a line starting with ':' is
// a comment; "field: value" loses one space after the colon; data fields
// accumulate (joined by LF); an empty line dispatches the event unless no
// data field was seen; "id" persists across events (and is ignored when it
// contains NUL); unknown fields and "retry" are ignored; an incomplete event
// at end of stream is dropped.
type Reader struct {
	sc     *bufio.Scanner
	lastID string
	first  bool
}

// MaxLine bounds one line (a log line can be long; an unbounded line is a
// broken server).
const MaxLine = 16 << 20

// NewReader reads events from r.
func NewReader(r io.Reader) *Reader {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), MaxLine)
	sc.Split(splitLines)
	return &Reader{sc: sc, first: true}
}

// SetLastEventID sets the ID in effect before the first "id" field (the
// Last-Event-ID a resumed stream was requested with).
func (r *Reader) SetLastEventID(id string) { r.lastID = id }

// LastEventID is the ID to resume from (the Last-Event-ID header value).
func (r *Reader) LastEventID() string { return r.lastID }

// Next returns the next event, or io.EOF at the end of the stream, or the
// read error.
func (r *Reader) Next() (Event, error) {
	var (
		typ     string
		data    strings.Builder
		hasData bool
	)
	for r.sc.Scan() {
		line := r.sc.Text()
		if r.first {
			r.first = false
			line = strings.TrimPrefix(line, "\uFEFF")
		}
		if line == "" {
			if !hasData {
				typ = ""
				continue
			}
			if typ == "" {
				typ = "message"
			}
			d := data.String()
			return Event{ID: r.lastID, Type: typ, Data: d[:len(d)-1]}, nil
		}
		if line[0] == ':' {
			continue
		}
		field, value, found := strings.Cut(line, ":")
		if found {
			value = strings.TrimPrefix(value, " ")
		}
		switch field {
		case "event":
			typ = value
		case "data":
			data.WriteString(value)
			data.WriteByte('\n')
			hasData = true
		case "id":
			if !strings.ContainsRune(value, 0) {
				r.lastID = value
			}
		}
	}
	if err := r.sc.Err(); err != nil {
		return Event{}, err
	}
	return Event{}, io.EOF
}

// splitLines is a bufio.SplitFunc for LF, CRLF and CR line endings.
func splitLines(data []byte, atEOF bool) (int, []byte, error) {
	if atEOF && len(data) == 0 {
		return 0, nil, nil
	}
	if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
		if data[i] == '\n' {
			return i + 1, data[:i], nil
		}
		// CR: swallow a following LF, which may not have arrived yet.
		if i+1 < len(data) {
			if data[i+1] == '\n' {
				return i + 2, data[:i], nil
			}
			return i + 1, data[:i], nil
		}
		if !atEOF {
			return 0, nil, nil
		}
		return i + 1, data[:i], nil
	}
	if atEOF {
		return len(data), data, nil
	}
	return 0, nil, nil
}
