package sse

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// StreamError is an "error" event that ended a stream: the server failed
// after the stream had started. Data is the event's data, the server's
// Error object ({code, message}) as JSON.
type StreamError struct {
	Data string
}

func (e *StreamError) Error() string { return "the server ended the stream with an error: " + e.Data }

// LogLines reads a log stream (GET /instances/{id}/logs): each "message"
// event's data is one line encoded as a JSON string. It calls line for each
// one and returns nil at the end of the stream, line's error as is, a
// *StreamError for an "error" event, or a described error for a broken
// stream (a read error, data that is not a JSON string).
func LogLines(body io.Reader, line func(string) error) error {
	rd := NewReader(body)
	for {
		ev, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the log stream: %w", err)
		}
		switch ev.Type {
		case "message":
			var s string
			if err := json.Unmarshal([]byte(ev.Data), &s); err != nil {
				return fmt.Errorf("the log stream sent %.200q, not a JSON string: %w", ev.Data, err)
			}
			if err := line(s); err != nil {
				return err
			}
		case "error":
			return &StreamError{Data: ev.Data}
		}
	}
}
