package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"hypeman/internal/auth"
	"hypeman/internal/events"
	"hypeman/internal/health"
	"hypeman/internal/hypervisor"
	"hypeman/internal/images"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/paths"
	"hypeman/internal/restart"
	"hypeman/internal/tags"
)

var testSecret = []byte("api-test-secret-0123456789abcdef-xyz")

// fakeInstances is an in-memory Instances.
type fakeInstances struct {
	mu         sync.Mutex
	byID       map[string]*instances.Instance
	created    []instances.CreateParams
	updated    []instances.UpdateParams
	lastStart  instances.StartParams
	stops      []instances.StopParams
	logLines   []string
	logOpts    []instances.LogOptions
	logDone    chan struct{} // closed when a follow StreamLogs returns
	panicOnGet bool
	stopDelay  time.Duration
	errOn      map[string]error // method name → error to return
}

func newFakeInstances() *fakeInstances {
	return &fakeInstances{byID: map[string]*instances.Instance{}, errOn: map[string]error{}, logDone: make(chan struct{}, 8)}
}

func (f *fakeInstances) add(in *instances.Instance) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.byID[in.ID] = in
}

func (f *fakeInstances) find(ref string) (*instances.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if in, ok := f.byID[ref]; ok {
		return in, nil
	}
	for _, in := range f.byID {
		if in.Name == ref {
			return in, nil
		}
	}
	return nil, fmt.Errorf("%w: %s", instances.ErrNotFound, ref)
}

func (f *fakeInstances) fail(method string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.errOn[method]
}

func (f *fakeInstances) Create(ctx context.Context, p instances.CreateParams) (*instances.Instance, error) {
	if err := f.fail("Create"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.created = append(f.created, p)
	f.mu.Unlock()
	in := &instances.Instance{ID: "id" + p.Name, Name: p.Name, Image: p.Image, State: state.Initializing,
		Size: "1GB", VCPUs: 2, OverlaySize: "10GB", Env: p.Env, Tags: p.Tags, Cmd: p.Cmd,
		CreatedAt: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), Hypervisor: "qemu"}
	applyPolicies(in, p.RestartPolicy, p.HealthCheck)
	in.ExpiresAt = p.ExpiresAt
	f.add(in)
	return in, nil
}

// Update records p and applies it like the manager's view does: a never
// policy and a zero check are not shown.
func (f *fakeInstances) Update(ctx context.Context, ref string, p instances.UpdateParams) (*instances.Instance, error) {
	if err := f.fail("Update"); err != nil {
		return nil, err
	}
	in, err := f.find(ref)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.updated = append(f.updated, p)
	applyPolicies(in, p.RestartPolicy, p.HealthCheck)
	cp := *in
	return &cp, nil
}

func applyPolicies(in *instances.Instance, p *restart.Policy, c *health.Check) {
	if p != nil {
		in.RestartPolicy = nil
		if !p.IsZero() {
			cp := *p
			in.RestartPolicy = &cp
		}
	}
	if c != nil {
		in.HealthCheck, in.HealthStatus = nil, &health.Status{Status: health.Disabled}
		if !c.IsZero() {
			cp := *c
			in.HealthCheck, in.HealthStatus = &cp, &health.Status{Status: health.Unknown}
		}
	}
}

func (f *fakeInstances) Get(ctx context.Context, ref string) (*instances.Instance, error) {
	if f.panicOnGet {
		panic("boom")
	}
	if err := f.fail("Get"); err != nil {
		return nil, err
	}
	return f.find(ref)
}

func (f *fakeInstances) List(ctx context.Context, o instances.ListOptions) ([]*instances.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*instances.Instance
	for _, in := range f.byID {
		if (o.State == "" || in.State == o.State) && tags.Match(in.Tags, o.Tags) {
			out = append(out, in)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (f *fakeInstances) Start(ctx context.Context, ref string, p instances.StartParams) (*instances.Instance, error) {
	if err := f.fail("Start"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.lastStart = p
	f.mu.Unlock()
	in, err := f.find(ref)
	if err != nil {
		return nil, err
	}
	cp := *in
	cp.State = state.Initializing
	return &cp, nil
}

func (f *fakeInstances) Stop(ctx context.Context, ref string, p instances.StopParams) (*instances.Instance, error) {
	f.mu.Lock()
	f.stops = append(f.stops, p)
	f.mu.Unlock()
	time.Sleep(f.stopDelay)
	if err := f.fail("Stop"); err != nil {
		return nil, err
	}
	in, err := f.find(ref)
	if err != nil {
		return nil, err
	}
	cp := *in
	cp.State = state.Stopped
	code, msg := 0, "exited"
	cp.ExitCode, cp.ExitMessage = &code, &msg
	return &cp, nil
}

func (f *fakeInstances) Delete(ctx context.Context, ref string) error {
	in, err := f.find(ref)
	if err != nil {
		return err
	}
	f.mu.Lock()
	delete(f.byID, in.ID)
	f.mu.Unlock()
	return nil
}

func (f *fakeInstances) StreamLogs(ctx context.Context, ref string, o instances.LogOptions, fn func(string) error) error {
	if _, err := f.find(ref); err != nil {
		return err
	}
	f.mu.Lock()
	f.logOpts = append(f.logOpts, o)
	lines := append([]string(nil), f.logLines...)
	f.mu.Unlock()
	if o.Tail >= 0 && len(lines) > o.Tail {
		lines = lines[len(lines)-o.Tail:]
	}
	for _, l := range lines {
		if err := fn(l); err != nil {
			return err
		}
	}
	if err := f.fail("StreamLogs"); err != nil {
		return err
	}
	if o.Follow {
		<-ctx.Done()
		f.logDone <- struct{}{}
	}
	return nil
}

func (f *fakeInstances) Stats(ctx context.Context, ref string) (*instances.Stats, error) {
	in, err := f.find(ref)
	if err != nil {
		return nil, err
	}
	return &instances.Stats{InstanceID: in.ID, Running: true, Pid: 42, CPUSeconds: 1.5, RSSBytes: 1 << 20, MemoryBytes: 1 << 30, VCPUs: 2}, nil
}

// fakeImages is an in-memory Images.
type fakeImages struct {
	mu         sync.Mutex
	byName     map[string]*images.Image
	deleted    []string
	lastEnsure images.EnsureOptions
}

func newFakeImages() *fakeImages { return &fakeImages{byName: map[string]*images.Image{}} }

func (f *fakeImages) norm(ref string) (string, error) { return images.NormalizeName(ref) }

func (f *fakeImages) CanonicalName(ref string) (string, error) { return f.norm(ref) }

func (f *fakeImages) List(ctx context.Context) ([]images.Image, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []images.Image
	for _, img := range f.byName {
		out = append(out, *img)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (f *fakeImages) Get(ctx context.Context, ref string) (*images.Image, error) {
	n, err := f.norm(ref)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	img, ok := f.byName[n]
	if !ok {
		return nil, fmt.Errorf("%w: %s", images.ErrNotFound, n)
	}
	cp := *img
	return &cp, nil
}

func (f *fakeImages) Ensure(ctx context.Context, ref string, opts images.EnsureOptions) (*images.Image, error) {
	n, err := f.norm(ref)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastEnsure = opts
	if img, ok := f.byName[n]; ok {
		cp := *img
		return &cp, nil
	}
	img := &images.Image{Name: n, Status: images.StatusPending, CreatedAt: time.Now().UTC()}
	f.byName[n] = img
	cp := *img
	return &cp, nil
}

func (f *fakeImages) Delete(ctx context.Context, ref string) error {
	n, err := f.norm(ref)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.byName[n]; !ok {
		return fmt.Errorf("%w: %s", images.ErrNotFound, n)
	}
	delete(f.byName, n)
	f.deleted = append(f.deleted, n)
	return nil
}

func (f *fakeImages) ImportImage(ctx context.Context, name string, img v1.Image) (*images.Image, error) {
	return nil, errors.New("fake: import not supported")
}

// fakeWaiter records calls and answers from a function.
type fakeWaiter struct {
	mu      sync.Mutex
	targets []state.State
	timeout time.Duration
	answer  func(ctx context.Context) (events.WaitResult, error)
}

func (f *fakeWaiter) WaitForState(ctx context.Context, ref string, targets []state.State, timeout time.Duration) (events.WaitResult, error) {
	f.mu.Lock()
	f.targets, f.timeout = targets, timeout
	f.mu.Unlock()
	return f.answer(ctx)
}

// fakeStat answers StatPath.
type fakeStat struct{}

func (fakeStat) StatPath(ctx context.Context, ref, path string, follow bool) (*PathStat, error) {
	switch path {
	case "/etc/passwd":
		return &PathStat{Exists: true, IsFile: true, Mode: 0o644, Size: 123}, nil
	case "/denied":
		return &PathStat{Error: "permission denied"}, nil
	}
	return &PathStat{Exists: false}, nil
}

// testEnv is a running test server.
type testEnv struct {
	t    *testing.T
	srv  *httptest.Server
	api  *Server
	inst *fakeInstances
	imgs *fakeImages
}

func newTestEnv(t *testing.T, mutate func(*Options)) *testEnv {
	t.Helper()
	e := &testEnv{t: t, inst: newFakeInstances(), imgs: newFakeImages()}
	opts := Options{
		Instances: e.inst, Images: e.imgs, Secret: testSecret, Version: "test-1",
		RegistryDir: t.TempDir(),
		Capabilities: func(context.Context) Capabilities {
			return Capabilities{Platform: "linux/amd64", RuntimeFeatures: []string{"snapshots", "standby"},
				Accelerator: hypervisor.AccelChoice{Accel: hypervisor.AccelTCG, Reason: "kvm_pvm detected"},
				NetworkMode: "user", NetworkReason: "not root"}
		},
		Keepalive: 20 * time.Millisecond,
	}
	if mutate != nil {
		mutate(&opts)
	}
	api, err := NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	e.api = api
	e.srv = httptest.NewServer(api)
	t.Cleanup(func() {
		e.srv.Close()
		api.Close()
	})
	return e
}

func mint(t testing.TB, scopes ...auth.Scope) string {
	t.Helper()
	var sc []auth.Scope
	if scopes != nil {
		sc = scopes
	}
	tok, err := auth.Mint(testSecret, auth.MintOptions{UserID: "tester", Scopes: sc, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// do sends a request with an optional bearer token ("" = none).
func (e *testEnv) do(method, path, token, body string) *http.Response {
	e.t.Helper()
	var rd *strings.Reader
	if body != "" {
		rd = strings.NewReader(body)
	} else {
		rd = strings.NewReader("")
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp
}

// fakeHypervisor is never asked to boot anything in the tests that use the
// real manager (the image never resolves). The embedded interface keeps it
// compiling as the driver interface grows; calling anything not defined
// here would panic, which the tests would report.
type fakeHypervisor struct{ hypervisor.Hypervisor }

func (fakeHypervisor) Name() string { return "fake" }
func (fakeHypervisor) Accel() hypervisor.AccelChoice {
	return hypervisor.AccelChoice{Accel: hypervisor.AccelTCG, Reason: "fake"}
}
func (fakeHypervisor) Launch(ctx context.Context, cfg hypervisor.VMConfig) (hypervisor.VM, error) {
	return nil, errors.New("fake hypervisor: launch not supported")
}
func (fakeHypervisor) Attach(ctx context.Context, dir string) (hypervisor.VM, error) {
	return nil, hypervisor.ErrNotRunning
}

// noImages resolves nothing: every valid create ends in a 404 for the image
// (403 when the token may not pull).
type noImages struct{}

func (noImages) ResolveLocal(ctx context.Context, ref string) (instances.ImageInfo, error) {
	if _, err := images.NormalizeName(ref); err != nil {
		return instances.ImageInfo{}, err
	}
	return instances.ImageInfo{}, fmt.Errorf("%w: %s", instances.ErrPullNotAllowed, ref)
}

func (noImages) Resolve(ctx context.Context, ref string) (instances.ImageInfo, error) {
	if _, err := images.NormalizeName(ref); err != nil {
		return instances.ImageInfo{}, err
	}
	return instances.ImageInfo{}, fmt.Errorf("%w: %s", images.ErrNotFound, ref)
}

// newRealManager is the real instance manager over a temp dir.
func newRealManager(t testing.TB) *instances.Manager {
	t.Helper()
	m, err := instances.New(context.Background(), instances.Config{
		Paths: paths.New(t.TempDir()), Hypervisor: fakeHypervisor{}, Images: noImages{},
		Events: events.New(events.Options{}),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}
