package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/spf13/cobra"

	"hypeman/internal/api/client"
)

// Output stream bytes of the exec protocol (first byte of each binary
// message from the server).
const (
	execStdout byte = 1
	execStderr byte = 2
)

type execFlags struct {
	interactive bool
	tty         bool
	env         []string
	workdir     string
	user        string
	timeout     time.Duration
}

func (a *app) execCommand() *cobra.Command {
	var f execFlags
	cmd := &cobra.Command{
		Use:   "exec [-i] [-t] [flags] INSTANCE [--] COMMAND [ARG...]",
		Short: "Run a command in a running instance",
		Long: `Exec runs COMMAND in INSTANCE through the guest agent and streams its
output. With -i your standard input is sent to the command; without it the
command's input is empty. With -t the command gets a terminal; when your
input is a terminal too it is switched to raw mode for the session and
window size changes follow you.

Exit status: the command's exit code (126/127 when it could not be
executed, 128+N when signal N killed it, 124 when --timeout killed it); 1
when the command could not be started (the instance is not Running, no
guest agent, ...); 130 when you interrupt (the command is killed).`,
		Example: `  hypeman exec web -- ls -l /
  hypeman exec -it web sh
  echo hi | hypeman exec -i -e GREETING=x web -- sh -c 'cat; echo $GREETING'`,
		Args: minArgs(2, "an instance and a command"),
		RunE: func(cmd *cobra.Command, args []string) error {
			command := args[1:]
			if command[0] == "--" {
				command = command[1:]
			}
			if len(command) == 0 || command[0] == "" {
				return &usageErr{cmd: cmd.CommandPath(), err: fmt.Errorf("%q needs a command", cmd.CommandPath())}
			}
			return a.execInstance(cmd, f, args[0], command)
		},
	}
	fl := cmd.Flags()
	fl.SetInterspersed(false) // flags after INSTANCE belong to the command
	fl.BoolVarP(&f.interactive, "interactive", "i", false, "send your standard input to the command")
	fl.BoolVarP(&f.tty, "tty", "t", false, "give the command a terminal")
	fl.StringArrayVarP(&f.env, "env", "e", nil, "set an environment variable `KEY=VALUE` (KEY alone copies it from your environment); repeatable")
	fl.StringVarP(&f.workdir, "workdir", "w", "", "working `DIR` of the command (default: the instance's)")
	fl.StringVarP(&f.user, "user", "u", "", "run as `USER` (name or uid[:gid]; default: the instance's)")
	fl.DurationVar(&f.timeout, "timeout", 0, "kill the command after this long (whole seconds; 0 = never)")
	return cmd
}

func (a *app) execInstance(cmd *cobra.Command, f execFlags, instance string, command []string) error {
	ctx := cmd.Context()
	usage := func(err error) error { return &usageErr{cmd: cmd.CommandPath(), err: err} }
	env, err := parseKV(f.env, "--env", a.env)
	if err != nil {
		return usage(err)
	}
	if f.timeout < 0 || f.timeout%time.Second != 0 {
		return usage(fmt.Errorf("--timeout must be a whole number of seconds, 0 or more"))
	}
	// Our own framing extension: a stream byte on every output frame, so
	// stderr stays stderr.
	start := client.ExecStart{Command: &command, SeparateStderr: ptr(true)}
	if f.tty {
		start.Tty = &f.tty
	}
	if env != nil {
		start.Env = &env
	}
	if f.workdir != "" {
		start.Cwd = &f.workdir
	}
	if f.user != "" {
		start.User = &f.user
	}
	if f.timeout > 0 {
		start.Timeout = ptr(int(f.timeout / time.Second))
	}
	// A terminal on our side: its size goes with the request, and with -i
	// it is put in raw mode so every key reaches the remote terminal.
	termFd, isTerm := -1, false
	if f.tty {
		termFd, isTerm = terminalFd(a.stdin)
		if isTerm {
			if rows, cols, ok := windowSize(termFd); ok {
				r, c := int(rows), int(cols)
				start.Rows, start.Cols = &r, &c
			}
		}
	}

	conn, err := a.dialWS(ctx, instance, "exec")
	if err != nil {
		return err
	}
	defer conn.CloseNow()
	if err := sendJSON(ctx, conn, start); err != nil {
		return endedEarly(ctx, err)
	}

	if isTerm && f.interactive {
		restore, err := makeRaw(termFd)
		if err != nil {
			return fmt.Errorf("cannot put the terminal in raw mode: %w", err)
		}
		defer restore()
	}
	done := make(chan struct{})
	defer close(done)
	if f.interactive {
		go pumpStdin(ctx, conn, a.stdin)
	} else if err := conn.Write(ctx, websocket.MessageBinary, nil); err != nil { // stdin EOF at once
		return endedEarly(ctx, err)
	}
	if isTerm {
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go followWindowSize(ctx, conn, termFd, winch, done)
	}

	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			return endedEarly(ctx, err)
		}
		if typ == websocket.MessageBinary {
			if len(data) == 0 {
				continue
			}
			switch data[0] {
			case execStdout:
				_, err = a.stdout.Write(data[1:])
			case execStderr:
				_, err = a.stderr.Write(data[1:])
			}
			if err != nil {
				return fmt.Errorf("write output: %w", err)
			}
			continue
		}
		var exit client.ExecExit
		if err := json.Unmarshal(data, &exit); err != nil || !bytes.Contains(data, []byte(`"exitCode"`)) {
			return fmt.Errorf("server sent an invalid message: %q", truncate(string(data), 200))
		}
		_ = conn.Close(websocket.StatusNormalClosure, "")
		if exit.Error != nil || exit.Code != nil {
			return &APIError{Code: deref(exit.Code), Message: deref(exit.Error)}
		}
		if deref(exit.TimedOut) {
			fmt.Fprintf(a.stderr, "hypeman exec: %s\n", deref(exit.Message))
		}
		if exit.ExitCode == 0 {
			return nil
		}
		return &exitErr{code: exit.ExitCode}
	}
}

// pumpStdin sends r as binary messages and then the empty message that
// means end of input. It may outlive the exec while blocked in Read (a
// terminal); its next write then fails and it returns.
func pumpStdin(ctx context.Context, conn *websocket.Conn, r io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if conn.Write(ctx, websocket.MessageBinary, buf[:n]) != nil {
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				_ = conn.Write(ctx, websocket.MessageBinary, nil)
			}
			return
		}
	}
}

// followWindowSize sends a resize message for every SIGWINCH until done.
func followWindowSize(ctx context.Context, conn *websocket.Conn, fd int, winch <-chan os.Signal, done <-chan struct{}) {
	type size struct {
		Rows uint16 `json:"rows"`
		Cols uint16 `json:"cols"`
	}
	for {
		select {
		case <-done:
			return
		case <-ctx.Done():
			return
		case <-winch:
			rows, cols, ok := windowSize(fd)
			if !ok {
				continue
			}
			if sendJSON(ctx, conn, map[string]size{"resize": {rows, cols}}) != nil {
				return
			}
		}
	}
}
