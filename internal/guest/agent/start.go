package agent

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"time"
)

// ProgramStarter applies a start request in a template-mode guest (the init
// implements it): clock, RNG, hostname, network, then the program is
// handed to the init's main loop. Errors wrapped with BadRequest are
// reported as CodeBadRequest; ErrAlreadyStarted as CodeConflict.
type ProgramStarter interface {
	StartProgram(ctx context.Context, req StartRequest) error
}

// ErrAlreadyStarted is returned by a ProgramStarter asked to start a
// second program (or a guest not booted in template mode).
var ErrAlreadyStarted = errors.New("start: this guest is not waiting for a program")

func (s *Server) start(ctx context.Context, req *StartRequest, log *slog.Logger) Response {
	switch {
	case req == nil:
		return Response{Error: "start: no start request", Code: CodeBadRequest}
	case s.Program == nil:
		return Response{Error: ErrAlreadyStarted.Error(), Code: CodeConflict}
	case len(req.Seed) < MinSeed || len(req.Seed) > MaxSeed:
		return s.reseed(req.Seed, log) // the same bad-request answer
	case len(req.Config.Volumes) > 0:
		return Response{Error: "start: a template-mode guest has no volume disks", Code: CodeBadRequest}
	}
	t0 := time.Now()
	if err := s.Program.StartProgram(ctx, *req); err != nil {
		log.Error("start", "err", err)
		if errors.Is(err, ErrAlreadyStarted) {
			return Response{Error: err.Error(), Code: CodeConflict}
		}
		return errorResponse(err)
	}
	c := req.Config
	s.started.Store(&execDefaults{env: maps.Clone(c.Env), user: c.User, cwd: c.WorkingDir, hostname: c.Hostname})
	log.Info("program handed over", "argv", c.Argv(), "took", time.Since(t0))
	return Response{}
}

// Start gives a template-mode guest its identity and program (see
// StartRequest). It returns once the guest applied the identity and handed
// the program to its init; the program's start shows on the console as for
// a cold boot (guestconfig.MarkerProgramStart).
func (c *Client) Start(ctx context.Context, req StartRequest) error {
	_, _, _, cleanup, err := c.call(ctx, Request{Op: OpStart, Start: &req})
	if err != nil {
		return err
	}
	cleanup()
	return nil
}
