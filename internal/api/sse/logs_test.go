package sse

import (
	"errors"
	"strings"
	"testing"
)

func TestLogLines(t *testing.T) {
	collect := func(body string) ([]string, error) {
		var got []string
		err := LogLines(strings.NewReader(body), func(l string) error { got = append(got, l); return nil })
		return got, err
	}
	got, err := collect("data: \"one\"\n\n: keepalive\ndata: \"two \\\"q\\\"\"\n\n")
	if err != nil || strings.Join(got, "|") != `one|two "q"` {
		t.Fatalf("lines %q, err %v", got, err)
	}
	got, err = collect("data: \"one\"\n\nevent: error\ndata: {\"code\":\"internal\",\"message\":\"gone\"}\n\ndata: \"never\"\n\n")
	var se *StreamError
	if !errors.As(err, &se) || se.Data != `{"code":"internal","message":"gone"}` || strings.Join(got, "|") != "one" {
		t.Fatalf("lines %q, err %v", got, err)
	}
	if _, err := collect("data: raw line\n\n"); err == nil || !strings.Contains(err.Error(), `sent "raw line", not a JSON string`) {
		t.Fatalf("not JSON: %v", err)
	}
	stop := errors.New("stop")
	n := 0
	err = LogLines(strings.NewReader("data: \"a\"\n\ndata: \"b\"\n\n"), func(string) error { n++; return stop })
	if err != stop || n != 1 {
		t.Fatalf("callback error: %v after %d lines", err, n)
	}
}
