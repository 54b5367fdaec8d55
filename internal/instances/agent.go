package instances

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"time"

	"hypeman/internal/guest/agent"
	"hypeman/internal/instances/state"
)

// AgentConn is one connection to a guest agent.
type AgentConn interface {
	Shutdown(ctx context.Context) error
	Stat(ctx context.Context, path string) (agent.FileInfo, error)
	Exec(ctx context.Context, req agent.ExecRequest, stdio agent.ExecIO) (agent.ExecResult, error)
	Put(ctx context.Context, req agent.PutRequest, data io.Reader) (int64, error)
	ReadTree(ctx context.Context, req agent.TreeRequest, visit agent.TreeVisitor) error
	Close() error
	Done() <-chan struct{}
}

// GuestAgent connects to the agent of a VM through its VMM socket.
type GuestAgent interface {
	Dial(ctx context.Context, socketPath string) (AgentConn, error)
}

// agentSlot holds the one shared agent connection of a live VM. The VMM's
// agent socket serves a single client at a time, so every operation on a
// VM (stop, exec, cp, stat) shares one multiplexed connection.
type agentSlot struct {
	mu   sync.Mutex
	conn AgentConn
}

func (s *agentSlot) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
}

// agentDialTimeout bounds how long an operation waits for the guest agent.
const agentDialTimeout = 10 * time.Second

// agentFor returns the live VM's agent connection, dialing it if needed.
func (m *Manager) agentFor(ctx context.Context, e *entry, lv *liveVM) (AgentConn, error) {
	if m.cfg.Agent == nil {
		return nil, fmt.Errorf("%w: no guest agent configured", ErrAgentUnavailable)
	}
	lv.agentConn.mu.Lock()
	defer lv.agentConn.mu.Unlock()
	if c := lv.agentConn.conn; c != nil {
		select {
		case <-c.Done():
			c.Close()
			lv.agentConn.conn = nil
		default:
			return c, nil
		}
	}
	e.mu.Lock()
	id := e.meta.ID
	e.mu.Unlock()
	dctx, cancel := context.WithTimeout(ctx, agentDialTimeout)
	defer cancel()
	c, err := m.cfg.Agent.Dial(dctx, filepath.Join(m.dir(id), agentSock))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrAgentUnavailable, err)
	}
	lv.agentConn.conn = c
	return c, nil
}

// withAgent runs fn with the agent of a Running instance (409 otherwise).
// It does not hold the instance's op lock: execs may run for hours while
// the instance is stopped or deleted, which ends them.
func (m *Manager) withAgent(ctx context.Context, ref string, a Action, fn func(AgentConn) error) error {
	e, err := m.resolve(ref)
	if err != nil {
		return err
	}
	e.mu.Lock()
	skip := e.meta.SkipGuestAgent
	e.mu.Unlock()
	st := m.currentState(ctx, e)
	if err := checkTransition(a, st); err != nil {
		return err
	}
	if skip {
		return fmt.Errorf("%w: the instance was created with skip_guest_agent", ErrAgentUnavailable)
	}
	e.mu.Lock()
	lv := e.live
	e.mu.Unlock()
	if lv == nil {
		return &TransitionError{Action: a, State: state.Stopped, Allowed: Allowed(state.Stopped)}
	}
	c, err := m.agentFor(ctx, e, lv)
	if err != nil {
		return err
	}
	return fn(c)
}

// Exec runs a command in a Running instance through the guest agent.
func (m *Manager) Exec(ctx context.Context, ref string, req agent.ExecRequest, stdio agent.ExecIO) (res agent.ExecResult, err error) {
	if len(req.Argv) == 0 {
		return res, &InvalidArgumentError{Field: "command", Reason: "is required"}
	}
	err = m.withAgent(ctx, ref, ActionExec, func(c AgentConn) error {
		res, err = c.Exec(ctx, req, stdio)
		return err
	})
	return res, err
}

// Stat reports on a path inside a Running instance (lstat semantics).
func (m *Manager) Stat(ctx context.Context, ref, path string) (fi agent.FileInfo, err error) {
	if path == "" {
		return fi, &InvalidArgumentError{Field: "path", Reason: "is required"}
	}
	err = m.withAgent(ctx, ref, ActionExec, func(c AgentConn) error {
		fi, err = c.Stat(ctx, path)
		return err
	})
	return fi, err
}

// CopyTo creates one file, directory or symlink inside a Running instance
// (data is a file's content) and returns the bytes written. Paths resolve
// inside the guest's root (the agent enforces it).
func (m *Manager) CopyTo(ctx context.Context, ref string, req agent.PutRequest, data io.Reader) (n int64, err error) {
	if req.Path == "" {
		return 0, &InvalidArgumentError{Field: "guest_path", Reason: "is required"}
	}
	err = m.withAgent(ctx, ref, ActionExec, func(c AgentConn) error {
		n, err = c.Put(ctx, req, data)
		return err
	})
	return n, err
}

// CopyFrom streams a file or directory tree inside a Running instance to
// visit, entry by entry.
func (m *Manager) CopyFrom(ctx context.Context, ref string, req agent.TreeRequest, visit agent.TreeVisitor) error {
	if req.Path == "" {
		return &InvalidArgumentError{Field: "guest_path", Reason: "is required"}
	}
	return m.withAgent(ctx, ref, ActionExec, func(c AgentConn) error { return c.ReadTree(ctx, req, visit) })
}
