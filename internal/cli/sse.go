package cli

import (
	"bufio"
	"bytes"
	"io"
	"strings"
)

// sseEvent is one dispatched server-sent event.
type sseEvent struct {
	ID   string // the last event ID in effect when it was dispatched
	Type string // "message" when the stream named none
	Data string // data fields joined with "\n"
}

// sseReader parses a text/event-stream body following the WHATWG rules the
// client side needs: lines end in LF, CRLF or CR; a line starting with ':' is
// a comment; "field: value" loses one space after the colon; data fields
// accumulate (joined by LF); an empty line dispatches the event unless no
// data field was seen; "id" persists across events (and is ignored when it
// contains NUL); unknown fields and "retry" are ignored; an incomplete event
// at end of stream is dropped.
type sseReader struct {
	sc     *bufio.Scanner
	lastID string
	first  bool
}

// maxSSELine bounds one line (a log line can be long; an unbounded line is a
// broken server).
const maxSSELine = 16 << 20

func newSSEReader(r io.Reader) *sseReader {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxSSELine)
	sc.Split(splitSSELines)
	return &sseReader{sc: sc, first: true}
}

// LastEventID is the ID to resume from (the Last-Event-ID header value).
func (r *sseReader) LastEventID() string { return r.lastID }

// Next returns the next event, or io.EOF at the end of the stream, or the
// read error.
func (r *sseReader) Next() (sseEvent, error) {
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
			return sseEvent{ID: r.lastID, Type: typ, Data: d[:len(d)-1]}, nil
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
		return sseEvent{}, err
	}
	return sseEvent{}, io.EOF
}

// splitSSELines is a bufio.SplitFunc for LF, CRLF and CR line endings.
func splitSSELines(data []byte, atEOF bool) (int, []byte, error) {
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

// readLimited reads at most n bytes of r.
func readLimited(r io.Reader, n int64) ([]byte, error) {
	return io.ReadAll(io.LimitReader(r, n))
}
