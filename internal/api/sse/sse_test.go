package sse

import (
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

func readAllEvents(t *testing.T, r io.Reader) ([]Event, error) {
	t.Helper()
	rd := NewReader(r)
	var out []Event
	for {
		ev, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, ev)
	}
}

func TestSSEReader(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want []Event
	}{
		{"log lines", "data: hello\n\ndata: world\n\n",
			[]Event{{Type: "message", Data: "hello"}, {Type: "message", Data: "world"}}},
		{"typed with id", "id: 7\nevent: state_change\ndata: {\"a\":1}\n\n",
			[]Event{{ID: "7", Type: "state_change", Data: `{"a":1}`}}},
		{"id persists", "id: 3\ndata: a\n\ndata: b\n\n",
			[]Event{{ID: "3", Type: "message", Data: "a"}, {ID: "3", Type: "message", Data: "b"}}},
		{"multi-line data joined", "data: one\ndata: two\ndata:three\n\n",
			[]Event{{Type: "message", Data: "one\ntwo\nthree"}}},
		{"only one leading space removed", "data:  indented\n\n",
			[]Event{{Type: "message", Data: " indented"}}},
		{"empty data dispatches empty event", "data: \n\ndata\n\n",
			[]Event{{Type: "message", Data: ""}, {Type: "message", Data: ""}}},
		{"comments and keepalives ignored", ": keepalive\n\n: x\ndata: y\n\n",
			[]Event{{Type: "message", Data: "y"}}},
		{"no data, no event", "event: ping\n\nid: 9\n\ndata: z\n\n",
			[]Event{{ID: "9", Type: "message", Data: "z"}}},
		{"CRLF and CR endings", "data: a\r\n\r\ndata: b\r\rdata: c\n\n",
			[]Event{{Type: "message", Data: "a"}, {Type: "message", Data: "b"}, {Type: "message", Data: "c"}}},
		{"unknown fields and retry ignored", "retry: 10\nfoo: bar\ndata: q\n\n",
			[]Event{{Type: "message", Data: "q"}}},
		{"id with NUL ignored", "id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n",
			[]Event{{ID: "1", Type: "message", Data: "a"}, {ID: "1", Type: "message", Data: "b"}}},
		{"BOM stripped", "\uFEFFdata: x\n\n", []Event{{Type: "message", Data: "x"}}},
		{"incomplete trailing event dropped", "data: a\n\ndata: partial\n", []Event{{Type: "message", Data: "a"}}},
		{"colon in value kept", "data: a: b\n\n", []Event{{Type: "message", Data: "a: b"}}},
		{"error event", "event: error\ndata: {\"code\":\"internal\",\"message\":\"boom\"}\n\n",
			[]Event{{Type: "error", Data: `{"code":"internal","message":"boom"}`}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readAllEvents(t, strings.NewReader(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %#v\nwant %#v", got, tc.want)
			}
			// The same stream delivered one byte at a time parses the same
			// (a CR at a read boundary must wait for a possible LF).
			got, err = readAllEvents(t, iotest.OneByteReader(strings.NewReader(tc.in)))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("one byte at a time: got %#v\nwant %#v", got, tc.want)
			}
		})
	}
}

func TestSSEReaderLastEventIDAndErrors(t *testing.T) {
	rd := NewReader(strings.NewReader("id: 41\nevent: state_change\ndata: {}\n\nid: 42\n"))
	if _, err := rd.Next(); err != nil {
		t.Fatal(err)
	}
	if _, err := rd.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("want EOF, got %v", err)
	}
	// An id field without an event still moves the resume point.
	if got := rd.LastEventID(); got != "42" {
		t.Fatalf("LastEventID = %q, want 42", got)
	}
	boom := errors.New("connection reset")
	rd = NewReader(io.MultiReader(strings.NewReader("data: a\n\n"), iotest.ErrReader(boom)))
	if ev, err := rd.Next(); err != nil || ev.Data != "a" {
		t.Fatalf("first event: %v %v", ev, err)
	}
	if _, err := rd.Next(); !errors.Is(err, boom) {
		t.Fatalf("want the read error, got %v", err)
	}
	// A long line (1 MiB) is fine.
	long := strings.Repeat("x", 1<<20)
	got, err := readAllEvents(t, strings.NewReader("data: "+long+"\n\n"))
	if err != nil || len(got) != 1 || got[0].Data != long {
		t.Fatalf("long line: %d events, err %v", len(got), err)
	}
}
