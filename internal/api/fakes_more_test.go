package api

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"hypeman/internal/guest/agent"
	"hypeman/internal/hypervisor"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/network/ingress"
)

// fakeLifecycle records calls and moves fake instances between states.
type fakeLifecycle struct {
	inst  *fakeInstances
	mu    sync.Mutex
	calls []string
	forks []instances.ForkParams
	err   error // returned by every call when set
}

func (f *fakeLifecycle) step(ref, action string, to state.State) (*instances.Instance, error) {
	f.mu.Lock()
	f.calls = append(f.calls, action+" "+ref)
	err := f.err
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	in, err := f.inst.find(ref)
	if err != nil {
		return nil, err
	}
	cp := *in
	cp.State = to
	cp.HasSnapshot = to == state.Standby
	return &cp, nil
}

func (f *fakeLifecycle) Standby(ctx context.Context, ref string, _ instances.StandbyParams) (*instances.Instance, error) {
	return f.step(ref, "standby", state.Standby)
}
func (f *fakeLifecycle) Restore(ctx context.Context, ref string) (*instances.Instance, error) {
	return f.step(ref, "restore", state.Running)
}
func (f *fakeLifecycle) Pause(ctx context.Context, ref string) (*instances.Instance, error) {
	return f.step(ref, "pause", state.Paused)
}
func (f *fakeLifecycle) Resume(ctx context.Context, ref string) (*instances.Instance, error) {
	return f.step(ref, "resume", state.Running)
}

func (f *fakeLifecycle) Fork(ctx context.Context, ref string, p instances.ForkParams) (*instances.Instance, error) {
	f.mu.Lock()
	f.forks = append(f.forks, p)
	err := f.err
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	src, err := f.inst.find(ref)
	if err != nil {
		return nil, err
	}
	if _, err := f.inst.find(p.Name); err == nil {
		return nil, fmt.Errorf("%w: %s", instances.ErrNameInUse, p.Name)
	}
	fork := *src
	fork.ID, fork.Name = "id"+p.Name, p.Name
	fork.State = p.TargetState
	if fork.State == "" {
		fork.State = state.Running
	}
	f.inst.add(&fork)
	return &fork, nil
}

// fakeSnapshots is an in-memory Snapshots.
type fakeSnapshots struct {
	inst    *fakeInstances
	mu      sync.Mutex
	byID    map[string]*instances.Snapshot
	created []instances.SnapshotParams
	forks   []instances.ForkParams
	restore []string // "instance snapshot"

	lastRestore instances.RestoreSnapshotParams
}

func newFakeSnapshots(inst *fakeInstances) *fakeSnapshots {
	return &fakeSnapshots{inst: inst, byID: map[string]*instances.Snapshot{}}
}

func (f *fakeSnapshots) add(sn *instances.Snapshot) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.byID[sn.ID] = sn
}

func (f *fakeSnapshots) find(ref string) (*instances.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if sn, ok := f.byID[ref]; ok {
		return sn, nil
	}
	for _, sn := range f.byID {
		if sn.Name == ref {
			return sn, nil
		}
	}
	return nil, fmt.Errorf("%w: %s", instances.ErrSnapshotNotFound, ref)
}

func (f *fakeSnapshots) CreateSnapshot(ctx context.Context, ref string, p instances.SnapshotParams) (*instances.Snapshot, error) {
	in, err := f.inst.find(ref)
	if err != nil {
		return nil, err
	}
	if p.Kind == instances.SnapshotStopped && in.State != state.Stopped {
		return nil, &instances.TransitionError{Action: "snapshot (kind Stopped)", State: in.State, Allowed: instances.Allowed(in.State)}
	}
	f.mu.Lock()
	f.created = append(f.created, p)
	f.mu.Unlock()
	name := p.Name
	if name == "" {
		name = in.Name + "-snap"
	}
	sn := &instances.Snapshot{ID: "snap" + name, Name: name, Kind: p.Kind, SourceInstanceID: in.ID, SourceInstanceName: in.Name,
		Image: in.Image, ImageDigest: "sha256:abc", Tags: p.Tags, CreatedAt: time.Date(2025, 2, 3, 4, 5, 6, 0, time.UTC),
		SizeBytes: 1234, MemoryBytes: 1 << 30,
		Compression: hypervisor.Compression{Algorithm: "zstd", Level: 1}, CompressionState: instances.CompressionStateCompressed}
	f.add(sn)
	return sn, nil
}

func (f *fakeSnapshots) ListSnapshots(ctx context.Context, filter instances.SnapshotFilter) ([]*instances.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*instances.Snapshot
	for _, sn := range f.byID {
		if filter.Matches(sn) {
			out = append(out, sn)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (f *fakeSnapshots) GetSnapshot(ctx context.Context, ref string) (*instances.Snapshot, error) {
	return f.find(ref)
}

func (f *fakeSnapshots) DeleteSnapshot(ctx context.Context, ref string) error {
	sn, err := f.find(ref)
	if err != nil {
		return err
	}
	f.mu.Lock()
	delete(f.byID, sn.ID)
	f.mu.Unlock()
	return nil
}

func (f *fakeSnapshots) RestoreSnapshot(ctx context.Context, instanceRef, snapshotRef string, p instances.RestoreSnapshotParams) (*instances.Instance, error) {
	f.mu.Lock()
	f.lastRestore = p
	f.mu.Unlock()
	sn, err := f.find(snapshotRef)
	if err != nil {
		return nil, err
	}
	in, err := f.inst.find(instanceRef)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.restore = append(f.restore, in.ID+" "+sn.ID)
	f.mu.Unlock()
	cp := *in
	cp.State = state.Running
	return &cp, nil
}

func (f *fakeSnapshots) ForkSnapshot(ctx context.Context, snapshotRef string, p instances.ForkParams) (*instances.Instance, error) {
	sn, err := f.find(snapshotRef)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.forks = append(f.forks, p)
	f.mu.Unlock()
	in := &instances.Instance{ID: "id" + p.Name, Name: p.Name, Image: sn.Image, State: state.Running, Size: "1GB", VCPUs: 2,
		OverlaySize: "10GB", CreatedAt: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), Hypervisor: "qemu"}
	f.inst.add(in)
	return in, nil
}

// fakeGuest plays the guest agent through a per-test function.
type fakeGuest struct {
	exec     func(ctx context.Context, ref string, req agent.ExecRequest, stdio agent.ExecIO) (agent.ExecResult, error)
	copyTo   func(ctx context.Context, ref string, req agent.PutRequest, data io.Reader) (int64, error)
	copyFrom func(ctx context.Context, ref string, req agent.TreeRequest, visit agent.TreeVisitor) error
}

func (f *fakeGuest) Exec(ctx context.Context, ref string, req agent.ExecRequest, stdio agent.ExecIO) (agent.ExecResult, error) {
	return f.exec(ctx, ref, req, stdio)
}
func (f *fakeGuest) CopyTo(ctx context.Context, ref string, req agent.PutRequest, data io.Reader) (int64, error) {
	return f.copyTo(ctx, ref, req, data)
}
func (f *fakeGuest) CopyFrom(ctx context.Context, ref string, req agent.TreeRequest, visit agent.TreeVisitor) error {
	return f.copyFrom(ctx, ref, req, visit)
}

// echoExec copies stdin to stdout (prefixed), writes to stderr, reports
// resizes and signals on stdout, and exits 3 after stdin EOF.
func echoExec(ctx context.Context, ref string, req agent.ExecRequest, stdio agent.ExecIO) (agent.ExecResult, error) {
	in, err := io.ReadAll(stdio.Stdin)
	if err != nil {
		return agent.ExecResult{}, err
	}
	fmt.Fprintf(stdio.Stdout, "%s:%s:%s", ref, strings.Join(req.Argv, " "), in)
	fmt.Fprint(stdio.Stderr, "to stderr")
	return agent.ExecResult{ExitCode: 3, Message: "exited with code 3"}, nil
}

// ttyExec reports the window size changes and signals it receives until
// it gets SIGTERM.
func ttyExec(ctx context.Context, ref string, req agent.ExecRequest, stdio agent.ExecIO) (agent.ExecResult, error) {
	fmt.Fprintf(stdio.Stdout, "tty=%v %dx%d\r\n", req.TTY, req.Rows, req.Cols)
	for {
		select {
		case <-ctx.Done():
			return agent.ExecResult{}, ctx.Err()
		case ws := <-stdio.Resize:
			fmt.Fprintf(stdio.Stdout, "resize %dx%d\r\n", ws.Rows, ws.Cols)
		case sig := <-stdio.Signals:
			fmt.Fprintf(stdio.Stdout, "signal %d\r\n", sig)
			if sig == syscall.SIGTERM {
				return agent.ExecResult{ExitCode: 143, Message: "killed by signal 15 (SIGTERM)"}, nil
			}
		}
	}
}

// fakeIngresses is an in-memory Ingresses.
type fakeIngresses struct {
	mu   sync.Mutex
	list []*ingress.Ingress
	reqs []ingress.CreateRequest
	err  error
}

func (f *fakeIngresses) Create(ctx context.Context, req ingress.CreateRequest) (*ingress.Ingress, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, req)
	if f.err != nil {
		return nil, f.err
	}
	for _, i := range f.list {
		if i.Name == req.Name {
			return nil, fmt.Errorf("%w: an ingress named %q exists", ingress.ErrConflict, req.Name)
		}
	}
	rules := append([]ingress.Rule(nil), req.Rules...)
	for i := range rules {
		if rules[i].Match.Port == 0 {
			rules[i].Match.Port = ingress.DefaultPort
		}
	}
	ing := &ingress.Ingress{ID: "ing" + req.Name, Name: req.Name, Rules: rules, CreatedAt: time.Date(2025, 5, 6, 7, 8, 9, 0, time.UTC)}
	f.list = append(f.list, ing)
	return ing, nil
}

func (f *fakeIngresses) find(ref string) int {
	for i, ing := range f.list {
		if ing.ID == ref || ing.Name == ref {
			return i
		}
	}
	return -1
}

func (f *fakeIngresses) Get(ctx context.Context, ref string) (*ingress.Ingress, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if i := f.find(ref); i >= 0 {
		return f.list[i], nil
	}
	return nil, fmt.Errorf("%w: %q", ingress.ErrNotFound, ref)
}

func (f *fakeIngresses) List(ctx context.Context) ([]*ingress.Ingress, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*ingress.Ingress(nil), f.list...), nil
}

func (f *fakeIngresses) Delete(ctx context.Context, ref string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := f.find(ref)
	if i < 0 {
		return fmt.Errorf("%w: %q", ingress.ErrNotFound, ref)
	}
	f.list = append(f.list[:i], f.list[i+1:]...)
	return nil
}
