package execws

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"hypeman/internal/api/client"
)

// TestRunSession drives one session against a fake exec endpoint: auth and
// path, the start message (separate_stderr forced on), stdin then EOF, a
// resize, both output streams and the final message.
func TestRunSession(t *testing.T) {
	got := make(chan string, 16) // what the server saw, in order
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/instances/web/exec" {
			got <- "path " + r.URL.Path
		}
		got <- "auth " + r.Header.Get("Authorization")
		conn, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer conn.CloseNow()
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		_, start, _ := conn.Read(ctx)
		got <- "start " + string(start)
		var stdin bytes.Buffer
		for {
			typ, data, err := conn.Read(ctx)
			if err != nil {
				return
			}
			if typ == websocket.MessageText {
				got <- "text " + string(data)
				continue
			}
			if len(data) == 0 {
				break
			}
			stdin.Write(data)
		}
		got <- "stdin " + stdin.String()
		conn.Write(ctx, websocket.MessageBinary, append([]byte{StreamStdout}, "out"...))
		conn.Write(ctx, websocket.MessageBinary, append([]byte{StreamStderr}, "err"...))
		conn.Write(ctx, websocket.MessageText, []byte(`{"exitCode":3,"message":"exited with code 3"}`))
		conn.Close(websocket.StatusNormalClosure, "")
	}))
	defer srv.Close()

	d := Dialer{BaseURL: srv.URL + "/v1/", Token: "tok"}
	conn, err := d.Dial(t.Context(), "web")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	sizes := make(chan Size, 1)
	sizes <- Size{Rows: 40, Cols: 120}
	pr, pw := io.Pipe()
	var stdout, stderr bytes.Buffer
	// Stdin ends once the resize was seen, so the order is fixed.
	go pw.Write([]byte("typed"))
	cmd := []string{"sh"}
	resultCh := make(chan struct {
		exit client.ExecExit
		err  error
	}, 1)
	go func() {
		exit, err := Run(t.Context(), conn, client.ExecStart{Command: &cmd}, IO{Stdin: pr, Stdout: &stdout, Stderr: &stderr, Resize: sizes})
		resultCh <- struct {
			exit client.ExecExit
			err  error
		}{exit, err}
	}()
	want := []string{"auth Bearer tok", `start {"command":["sh"],"separate_stderr":true}`, `text {"resize":{"rows":40,"cols":120}}`}
	for _, w := range want {
		if g := <-got; g != w {
			t.Fatalf("server saw %q, want %q", g, w)
		}
	}
	pw.Close()
	if g := <-got; g != "stdin typed" {
		t.Fatalf("server saw %q", g)
	}
	res := <-resultCh
	if res.err != nil || res.exit.ExitCode != 3 || stdout.String() != "out" || stderr.String() != "err" {
		t.Fatalf("exit %+v err %v stdout %q stderr %q", res.exit, res.err, stdout.String(), stderr.String())
	}
}

// TestDialRefusedAndBadFinal: a refusal before the upgrade is a
// *RefusedError carrying the API body; a final message without exitCode is
// an error, not exit 0.
func TestDialRefusedAndBadFinal(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/stopped/") {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusConflict)
			json.NewEncoder(w).Encode(map[string]string{"code": "invalid_state", "message": "cannot exec instance in state Stopped"})
			return
		}
		conn, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer conn.CloseNow()
		conn.Read(r.Context())
		conn.Write(r.Context(), websocket.MessageText, []byte(`{"exit_code":0}`))
	}))
	defer srv.Close()
	d := Dialer{BaseURL: srv.URL}
	_, err := d.Dial(t.Context(), "stopped")
	var re *RefusedError
	if !errors.As(err, &re) || re.Status != http.StatusConflict || !strings.Contains(re.Error(), "cannot exec instance in state Stopped") {
		t.Fatalf("err %v", err)
	}
	conn, err := d.Dial(t.Context(), "web")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	if _, err := Run(t.Context(), conn, client.ExecStart{}, IO{}); err == nil || !strings.Contains(err.Error(), "invalid message") {
		t.Fatalf("err %v", err)
	}
}
