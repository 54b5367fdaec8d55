package agent

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/creack/pty"

	"hypeman/internal/guest/guestproc"
)

const (
	// execDrainTimeout bounds how long output is still forwarded after the
	// command exited (background children may keep its stdout open).
	execDrainTimeout = 500 * time.Millisecond
	// execLingerTimeout bounds how long the server waits for the client to
	// close its side after the exit frame.
	execLingerTimeout = 2 * time.Second
)

type execOutput struct {
	f   *os.File
	typ byte
}

// exec runs one command. Lifetime rules: the process is killed (its whole
// process group) when the timeout expires, when the client goes away (stream
// EOF/error) or when the session ends; it is not killed when it exits
// normally, so daemons it started in the background survive, as with
// docker exec.
func (s *Server) exec(ctx context.Context, st net.Conn, br *bufio.Reader, req *ExecRequest, log *slog.Logger) {
	fw := &frameWriter{w: st}
	defs := s.defaults()
	userSpec := req.User
	if userSpec == "" {
		userSpec = defs.user
	}
	user, err := guestproc.ResolveUser(s.Root, userSpec)
	if err != nil {
		_ = writeJSONLine(st, errorResponse(err))
		return
	}
	cwd := req.Cwd
	if cwd == "" {
		cwd = defs.cwd
	}
	d := guestproc.EnvDefaults{Home: user.Home, Hostname: defs.hostname}
	if req.TTY {
		d.Term = "xterm"
	}
	cmd, err := guestproc.Command(guestproc.Spec{
		Root: s.Root, Argv: req.Argv, Env: guestproc.BuildEnv(d, defs.env, req.Env),
		Cwd: cwd, User: user, Setsid: true, Setctty: req.TTY,
	})
	if err != nil {
		s.execFailed(st, fw, err)
		return
	}

	var (
		stdin      io.WriteCloser
		outputs    []execOutput
		childFiles []*os.File
		ptmx       *os.File
	)
	closeAll := func(fs []*os.File) {
		for _, f := range fs {
			f.Close()
		}
	}
	if req.TTY {
		var tty *os.File
		ptmx, tty, err = pty.Open()
		if err != nil {
			_ = writeJSONLine(st, errorResponse(fmt.Errorf("open pty: %w", err)))
			return
		}
		if req.Rows > 0 && req.Cols > 0 {
			_ = pty.Setsize(ptmx, &pty.Winsize{Rows: req.Rows, Cols: req.Cols})
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		cmd.SysProcAttr.Ctty = 0 // the child's fd 0
		childFiles = []*os.File{tty}
		stdin = ptmx
		outputs = []execOutput{{ptmx, frameStdout}}
	} else {
		inR, inW, err1 := os.Pipe()
		outR, outW, err2 := os.Pipe()
		errR, errW, err3 := os.Pipe()
		if err := errors.Join(err1, err2, err3); err != nil {
			closeAll([]*os.File{inR, inW, outR, outW, errR, errW})
			_ = writeJSONLine(st, errorResponse(fmt.Errorf("pipes: %w", err)))
			return
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
		childFiles = []*os.File{inR, outW, errW}
		stdin = inW
		outputs = []execOutput{{outR, frameStdout}, {errR, frameStderr}}
	}
	parentFiles := []*os.File{}
	for _, o := range outputs {
		parentFiles = append(parentFiles, o.f)
	}
	if !req.TTY {
		parentFiles = append(parentFiles, stdin.(*os.File))
	}

	wait, err := s.Starter.Start(cmd)
	closeAll(childFiles)
	if err != nil {
		closeAll(parentFiles)
		s.execFailed(st, fw, guestproc.StartError(req.Argv[0], err))
		return
	}
	pid := cmd.Process.Pid
	log = log.With("pid", pid, "argv0", req.Argv[0])
	log.Debug("exec started")

	var done atomic.Bool // set once the process has been waited for
	killGroup := func(sig syscall.Signal) {
		if !done.Load() {
			_ = syscall.Kill(-pid, sig) // Setsid: the process group id is pid
		}
	}
	exited := make(chan struct{})

	if err := writeJSONLine(st, Response{}); err != nil {
		killGroup(syscall.SIGKILL)
	}

	// Output pumps.
	var pumps sync.WaitGroup
	for _, o := range outputs {
		pumps.Add(1)
		go func() {
			defer pumps.Done()
			buf := make([]byte, maxFrame)
			_, _ = io.CopyBuffer(dataWriter{fw: fw, typ: o.typ}, o.f, buf)
		}()
	}

	// Stdin writer: decoupled from the frame reader through a small queue so
	// that a full pipe only stalls stdin, and stops when the process exits.
	stdinCh := make(chan []byte, 8)
	stdinDone := make(chan struct{})
	go func() {
		defer close(stdinDone)
		for b := range stdinCh {
			_, _ = stdin.Write(b)
		}
		if req.TTY {
			_, _ = stdin.Write([]byte{4}) // ^D: end of input for the line discipline
		} else {
			_ = stdin.Close()
		}
	}()

	// Frame reader: stdin, stdin EOF, resize, signal; EOF/error = client gone.
	inputDone := make(chan struct{})
	go func() {
		defer close(inputDone)
		stdinOpen := true
		closeStdin := func() {
			if stdinOpen {
				stdinOpen = false
				close(stdinCh)
			}
		}
		defer closeStdin()
		for {
			typ, payload, err := readFrame(br)
			if err != nil {
				killGroup(syscall.SIGKILL)
				return
			}
			switch typ {
			case frameStdin:
				if stdinOpen {
					select {
					case stdinCh <- payload:
					case <-exited:
					}
				}
			case frameStdinClose:
				closeStdin()
			case frameResize:
				if ptmx != nil && len(payload) == 4 {
					_ = pty.Setsize(ptmx, &pty.Winsize{
						Rows: binary.BigEndian.Uint16(payload[0:2]),
						Cols: binary.BigEndian.Uint16(payload[2:4]),
					})
				}
			case frameSignal:
				if len(payload) == 1 {
					killGroup(syscall.Signal(payload[0]))
				}
			}
		}
	}()

	var timedOut atomic.Bool
	if req.Timeout > 0 {
		t := time.AfterFunc(req.Timeout, func() {
			timedOut.Store(true)
			killGroup(syscall.SIGKILL)
		})
		defer t.Stop()
	}
	stopOnCtx := context.AfterFunc(ctx, func() { killGroup(syscall.SIGKILL) })
	defer stopOnCtx()

	ws, _ := wait()
	done.Store(true)
	close(exited)

	drained := make(chan struct{})
	go func() { pumps.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(execDrainTimeout):
		for _, o := range outputs {
			_ = o.f.SetReadDeadline(time.Now())
		}
		<-drained
	}
	code, msg, _ := guestproc.DescribeStatus(ws)
	res := ExecResult{ExitCode: code, Message: msg}
	if timedOut.Load() {
		res.TimedOut = true
		res.Message = fmt.Sprintf("timed out after %s: %s", req.Timeout, msg)
	}
	log.Debug("exec ended", "code", code, "msg", res.Message)
	if err := fw.json(frameExit, res); err != nil {
		log.Info("exit status not delivered", "err", err)
	}
	_ = st.Close() // half-close: the client sees the end of the stream

	select {
	case <-inputDone:
	case <-time.After(execLingerTimeout):
		_ = st.SetReadDeadline(time.Now())
		<-inputDone
	}
	// The writer may be blocked on a pipe a background child never reads:
	// closing our end fails that write.
	for _, f := range parentFiles {
		_ = f.Close()
	}
	if ptmx != nil {
		_ = ptmx.Close()
	}
	<-stdinDone
}

// execFailed answers an exec whose command cannot run. A missing or
// non-executable command is reported like a program result (126/127, with
// the message on stderr), as docker exec does; anything else is an error.
func (s *Server) execFailed(st net.Conn, fw *frameWriter, err error) {
	var ce *guestproc.CommandError
	if !errors.As(err, &ce) {
		_ = writeJSONLine(st, errorResponse(err))
		return
	}
	if writeJSONLine(st, Response{}) != nil {
		return
	}
	_ = fw.frame(frameStderr, []byte(ce.Error()+"\n"))
	_ = fw.json(frameExit, ExecResult{ExitCode: ce.ExitCode(), Message: ce.Error()})
}
