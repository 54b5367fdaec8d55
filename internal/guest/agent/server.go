package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"

	"hypeman/internal/guest/guestproc"
)

// Starter starts a command and returns how to wait for it. The guest init
// passes its reaper (PID 1 must own every wait); tests use
// guestproc.DirectStarter.
type Starter interface {
	Start(cmd *exec.Cmd) (guestproc.WaitFunc, error)
}

// Server is the guest side of the agent.
type Server struct {
	// Root is the host path of the instance root execs chroot into and
	// file operations are confined to.
	Root string
	// BaseEnv is the instance's environment; exec env is layered on top.
	BaseEnv map[string]string
	// DefaultUser and DefaultCwd apply when an exec does not set them.
	DefaultUser string
	DefaultCwd  string
	Hostname    string
	Starter     Starter
	// Shutdown is called (once per request) after a shutdown request has
	// been acknowledged.
	Shutdown func()
	// Network applies configure_network requests; nil refuses them.
	Network NetworkConfigurer
	// RNG takes reseed requests; nil means the kernel RNG (KernelRNG).
	RNG Reseeder
	// Program takes start requests (a template-mode guest); nil refuses
	// them.
	Program ProgramStarter
	Logger  *slog.Logger

	// started holds the instance defaults a start request set; they
	// replace BaseEnv, DefaultUser, DefaultCwd and Hostname for execs.
	started atomic.Pointer[execDefaults]
}

// execDefaults are what an exec inherits from the instance.
type execDefaults struct {
	env       map[string]string
	user, cwd string
	hostname  string
}

// defaults returns the instance defaults execs inherit.
func (s *Server) defaults() execDefaults {
	if d := s.started.Load(); d != nil {
		return *d
	}
	return execDefaults{env: s.BaseEnv, user: s.DefaultUser, cwd: s.DefaultCwd, hostname: s.Hostname}
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// yamuxConfig is shared by both ends. Keepalives are off: a paused VM
// (standby) must not kill the session, and both ends learn of a dead peer
// from the transport itself (QEMU's socket closes; the guest port reads EOF).
func yamuxConfig() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = false
	cfg.LogOutput = io.Discard
	cfg.StreamOpenTimeout = 0
	cfg.StreamCloseTimeout = time.Minute
	return cfg
}

// Serve runs one yamux session over conn until the peer goes away, conn
// fails or ctx is done. It waits for its handlers before returning.
func (s *Server) Serve(ctx context.Context, conn io.ReadWriteCloser) error {
	_, _, err := s.serve(ctx, conn)
	return err
}

// serve is Serve that also reports how many streams the session carried and
// whether it ended because conn reached EOF (the host went away with nothing
// of its left unread), rather than being reset or failing.
func (s *Server) serve(ctx context.Context, conn io.ReadWriteCloser) (streams int, eof bool, err error) {
	sess, err := yamux.Server(conn, yamuxConfig())
	if err != nil {
		return 0, false, fmt.Errorf("agent: start session: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()
	state := &sessionState{close: func() { sess.Close() }}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer sess.Close()
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			if ctx.Err() != nil {
				return streams, false, ctx.Err()
			}
			if errors.Is(err, io.EOF) {
				return streams, true, nil
			}
			if errors.Is(err, yamux.ErrSessionShutdown) {
				return streams, false, nil
			}
			return streams, false, fmt.Errorf("agent: accept: %w", err)
		}
		streams++
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer st.Close()
			s.handle(ctx, st, state)
		}()
	}
}

func writeJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// maxRequestLine bounds the request header.
const maxRequestLine = 1 << 20

func readRequest(br *bufio.Reader) (*Request, error) {
	var line []byte
	for {
		chunk, isPrefix, err := br.ReadLine()
		if err != nil {
			return nil, err
		}
		line = append(line, chunk...)
		if len(line) > maxRequestLine {
			return nil, errors.New("request line too long")
		}
		if !isPrefix {
			break
		}
	}
	var req Request
	if err := json.Unmarshal(line, &req); err != nil {
		return nil, fmt.Errorf("bad request: %w", err)
	}
	return &req, nil
}

// sessionState is what one yamux session remembers.
type sessionState struct {
	helloSeen atomic.Bool
	close     func()
}

// staleTeardownDelay lets the "stale session" answer reach the host before
// the session (and the port) is closed.
const staleTeardownDelay = 50 * time.Millisecond

func (s *Server) handle(ctx context.Context, st net.Conn, state *sessionState) {
	br := bufio.NewReader(st)
	req, err := readRequest(br)
	if err != nil {
		_ = writeJSONLine(st, Response{Error: err.Error(), Code: CodeBadRequest})
		return
	}
	log := s.logger().With("op", req.Op)
	log.Debug("request")
	switch req.Op {
	case OpHello:
		if !state.helloSeen.CompareAndSwap(false, true) {
			log.Info("hello on a used session: the host reconnected unseen; resetting")
			_ = writeJSONLine(st, Response{Error: "stale session", Code: CodeStaleSession})
			time.AfterFunc(staleTeardownDelay, state.close)
			return
		}
		_ = writeJSONLine(st, Response{Version: ProtocolVersion})
	case OpPing:
		_ = writeJSONLine(st, Response{})
	case OpShutdown:
		err := writeJSONLine(st, Response{})
		if s.Shutdown != nil {
			s.Shutdown()
		}
		if err != nil {
			log.Info("shutdown ack not delivered", "err", err)
		}
	case OpStat:
		fi, err := s.stat(req.Path)
		if err != nil {
			_ = writeJSONLine(st, errorResponse(err))
			return
		}
		_ = writeJSONLine(st, Response{Stat: fi})
	case OpExec:
		if req.Exec == nil || len(req.Exec.Argv) == 0 {
			_ = writeJSONLine(st, Response{Error: "exec: empty argv", Code: CodeBadRequest})
			return
		}
		s.exec(ctx, st, br, req.Exec, log)
	case OpPut:
		s.put(st, br, req.Put, log)
	case OpReadTree:
		s.readTree(st, req.Tree, log)
	case OpConfigureNetwork:
		_ = writeJSONLine(st, s.configureNetwork(ctx, req.Network, log))
	case OpReseed:
		_ = writeJSONLine(st, s.reseed(req.Seed, log))
	case OpStart:
		_ = writeJSONLine(st, s.start(ctx, req.Start, log))
	default:
		_ = writeJSONLine(st, Response{Error: fmt.Sprintf("unknown op %q", req.Op), Code: CodeBadRequest})
	}
}

// errBadPath marks a request path the server refuses.
var errBadPath = errors.New("bad path")

func errorResponse(err error) Response {
	r := Response{Error: err.Error()}
	var br badRequestError
	var ce conflictError
	switch {
	case errors.As(err, &br), errors.Is(err, errBadPath):
		r.Code = CodeBadRequest
	case errors.Is(err, os.ErrNotExist):
		r.Code = CodeNotFound
	case errors.As(err, &ce), errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EISDIR),
		errors.Is(err, syscall.EEXIST), errors.Is(err, syscall.ELOOP):
		r.Code = CodeConflict
	}
	return r
}

// guestPath validates a path from a request: absolute, no NUL.
func guestPath(p string) (string, error) {
	if p == "" || !strings.HasPrefix(p, "/") || strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("%w: %q must be an absolute path", errBadPath, p)
	}
	return filepath.Clean(p), nil
}
