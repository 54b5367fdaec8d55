package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/yaml"

	"hypeman/internal/api/gen"
	"hypeman/internal/auth"
	"hypeman/internal/events"
	"hypeman/internal/guest/agent"
	"hypeman/internal/hypervisor"
	"hypeman/internal/images"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/network/ingress"
	"hypeman/internal/phases"
	"hypeman/internal/registry"
	"hypeman/internal/warm"
)

// Instances is what the handlers need from the instance manager
// (*instances.Manager satisfies it).
type Instances interface {
	Create(ctx context.Context, p instances.CreateParams) (*instances.Instance, error)
	Get(ctx context.Context, ref string) (*instances.Instance, error)
	List(ctx context.Context, opts instances.ListOptions) ([]*instances.Instance, error)
	Start(ctx context.Context, ref string, p instances.StartParams) (*instances.Instance, error)
	Stop(ctx context.Context, ref string, p instances.StopParams) (*instances.Instance, error)
	Delete(ctx context.Context, ref string) error
	// Update changes the restart policy and/or health check (PATCH).
	Update(ctx context.Context, ref string, p instances.UpdateParams) (*instances.Instance, error)
	StreamLogs(ctx context.Context, ref string, opts instances.LogOptions, fn func(line string) error) error
	Stats(ctx context.Context, ref string) (*instances.Stats, error)
}

// Images is what the handlers need from the image store (*images.Store
// satisfies it).
type Images interface {
	List(ctx context.Context) ([]images.Image, error)
	Get(ctx context.Context, nameOrDigest string) (*images.Image, error)
	// Ensure starts a pull (or joins one) and returns at once.
	Ensure(ctx context.Context, ref string, opts images.EnsureOptions) (*images.Image, error)
	Delete(ctx context.Context, nameOrDigest string) error
	// ImportImage converts a pushed image (the built-in registry uses it).
	ImportImage(ctx context.Context, name string, img v1.Image) (*images.Image, error)
	// CanonicalName is the name a reference is recorded under.
	CanonicalName(ref string) (string, error)
}

// PathStat is what the guest reports about a path.
type PathStat struct {
	Exists     bool
	IsDir      bool
	IsFile     bool
	IsSymlink  bool
	LinkTarget string
	Mode       uint32
	Size       int64
	// Error is set when the guest could not stat the path (e.g. EACCES);
	// Exists is then meaningless.
	Error string
}

// PathStatter stats paths inside a guest (the guest agent, issue 6).
// Optional: without it GET /instances/{id}/stat answers 501.
type PathStatter interface {
	StatPath(ctx context.Context, ref, path string, followLinks bool) (*PathStat, error)
}

// StateWaiter blocks until an instance reaches a target state (the manager's
// WaitForState). Optional: without it GET /instances/{id}/wait answers 501.
// A deleted instance must yield an error matching instances.ErrNotFound.
type StateWaiter interface {
	WaitForState(ctx context.Context, ref string, targets []state.State, timeout time.Duration) (events.WaitResult, error)
}

// EventSource is the lifecycle event bus (*events.Bus satisfies it).
// Optional: without it the events streams answer 501.
type EventSource interface {
	Subscribe(opts events.SubscribeOptions) *events.Subscription
	SubscribeSince(lastID uint64, opts events.SubscribeOptions) ([]events.Event, *events.Subscription, bool)
}

// Lifecycle is standby, restore, pause, resume and fork (*instances.Manager
// satisfies it). Optional: without it those routes answer 501.
type Lifecycle interface {
	Standby(ctx context.Context, ref string, p instances.StandbyParams) (*instances.Instance, error)
	Restore(ctx context.Context, ref string) (*instances.Instance, error)
	Pause(ctx context.Context, ref string) (*instances.Instance, error)
	Resume(ctx context.Context, ref string) (*instances.Instance, error)
	Fork(ctx context.Context, ref string, p instances.ForkParams) (*instances.Instance, error)
}

// Snapshots is the snapshot resource (*instances.Manager satisfies it).
// Optional: without it the snapshot routes answer 501. A missing snapshot
// must yield an error matching instances.ErrSnapshotNotFound.
type Snapshots interface {
	CreateSnapshot(ctx context.Context, ref string, p instances.SnapshotParams) (*instances.Snapshot, error)
	ListSnapshots(ctx context.Context, f instances.SnapshotFilter) ([]*instances.Snapshot, error)
	GetSnapshot(ctx context.Context, ref string) (*instances.Snapshot, error)
	DeleteSnapshot(ctx context.Context, ref string) error
	RestoreSnapshot(ctx context.Context, instanceRef, snapshotRef string, p instances.RestoreSnapshotParams) (*instances.Instance, error)
	ForkSnapshot(ctx context.Context, snapshotRef string, p instances.ForkParams) (*instances.Instance, error)
}

// Guest runs commands and copies files through the guest agent
// (*instances.Manager satisfies it). Optional: without it the exec and cp
// WebSockets answer 501.
type Guest interface {
	Exec(ctx context.Context, ref string, req agent.ExecRequest, stdio agent.ExecIO) (agent.ExecResult, error)
	CopyTo(ctx context.Context, ref string, req agent.PutRequest, data io.Reader) (int64, error)
	CopyFrom(ctx context.Context, ref string, req agent.TreeRequest, visit agent.TreeVisitor) error
}

// Ingresses publishes instance ports through the daemon's reverse proxy
// (*ingress.Manager satisfies it). Optional: without it the ingress routes
// answer 501.
type Ingresses interface {
	Create(ctx context.Context, req ingress.CreateRequest) (*ingress.Ingress, error)
	Get(ctx context.Context, idOrName string) (*ingress.Ingress, error)
	List(ctx context.Context) ([]*ingress.Ingress, error)
	Delete(ctx context.Context, idOrName string) error
}

// Phases reports how long instances spent in each lifecycle phase
// (*phases.Tracker satisfies it). Optional: without it an instance reports
// only its current phase, since now.
type Phases interface {
	View(id string, st state.State, entered time.Time) phases.View
}

// Capabilities describe the host for GET /capabilities.
type Capabilities struct {
	Accelerator   hypervisor.AccelChoice
	NetworkMode   string // bridge, user or none
	NetworkReason string
	// Gateway and Subnet of the guest network (bridge mode).
	Gateway, Subnet string
	// GuestToGuest reports whether guests can reach each other directly.
	GuestToGuest bool
	// Platform is the image platform guests run (os/arch).
	Platform string
	// RuntimeFeatures are the feature IDs of the QEMU runtime on this
	// host (snapshots, standby, fork, pause, ...).
	RuntimeFeatures []string
	// Warm create (package warm): enabled, why not, and the pool.
	WarmEnabled bool
	WarmReason  string
	WarmStatus  warm.Status
}

// Options configure NewServer. Instances, Images and Secret are required.
type Options struct {
	Instances Instances
	Images    Images
	Stat      PathStatter     // optional (501 without)
	Waiter    StateWaiter     // optional (501 without)
	Events    EventSource     // optional (501 without)
	Lifecycle Lifecycle       // optional (501 without)
	Snapshots Snapshots       // optional (501 without)
	Guest     Guest           // optional (501 without)
	Ingresses Ingresses       // optional (501 without)
	Volumes   Volumes         // optional (501 without)
	Phases    Phases          // optional (current phase only without)
	Pushes    Pushes          // optional (501 without)
	Resources ResourceLedger  // optional (501 without)
	Reclaimer MemoryReclaimer // optional (501 without)
	Templates Templates       // optional (501 without); templates.go
	// AutoStandby answers the auto-standby status and hold routes
	// (autostandby.go); optional (status unsupported without).
	AutoStandby AutoStandby
	// Schedules are the snapshot schedules (schedules.go); optional (501
	// without).
	Schedules Schedules
	// InstanceVolumes attaches and detaches volumes (instance_volumes.go);
	// optional (501 without).
	InstanceVolumes InstanceVolumes
	// Secret is the HS256 key (auth.LoadOrCreateSecret).
	Secret []byte
	// Version is reported by /capabilities.
	Version string
	// Capabilities is called per request (it may probe the host).
	Capabilities func(ctx context.Context) Capabilities
	// RegistryDir holds the built-in registry (paths.RegistryDir()).
	// Empty disables /v2/ (it answers 404).
	RegistryDir string
	// RegistryLimits cap uploads into the built-in registry.
	RegistryLimits registry.Limits
	Logger         *slog.Logger
	// Metrics, when set, receives hypeman_http_request_duration_seconds.
	Metrics prometheus.Registerer
	// MaxBodyBytes bounds API request bodies (default 1 MiB).
	MaxBodyBytes int64
	// Keepalive is the SSE comment interval on idle streams (default 15s).
	Keepalive time.Duration
	// Now is the clock for token expiry (tests); default time.Now.
	Now func() time.Time
}

// Server is the HTTP handler of hypemand.
type Server struct {
	s *server
}

// ServeHTTP serves the API, the spec and the registry.
func (h *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.s.router.ServeHTTP(w, r) }

// Close waits for registry imports in flight to be handed to the store.
func (h *Server) Close() error {
	if h.s.registry != nil {
		h.s.registry.Wait()
	}
	return nil
}

// server holds the dependencies; it implements gen.StrictServerInterface.
type server struct {
	opts     Options
	log      *slog.Logger
	verifier *auth.Verifier
	policies map[string]policy
	metrics  *httpMetrics
	registry *registry.Registry
	router   chi.Router
	specJSON []byte
	specYAML []byte
}

// The production implementations satisfy the consumer interfaces.
var (
	_ gen.StrictServerInterface = (*server)(nil)
	_ Instances                 = (*instances.Manager)(nil)
	_ Images                    = (*images.Store)(nil)
	_ EventSource               = (*events.Bus)(nil)
	_ Lifecycle                 = (*instances.Manager)(nil)
	_ Snapshots                 = (*instances.Manager)(nil)
	_ Guest                     = (*instances.Manager)(nil)
	_ Ingresses                 = (*ingress.Manager)(nil)
	_ Phases                    = (*phases.Tracker)(nil)
	_ registry.Importer         = (*images.Store)(nil)
)

// NewServer builds the handler: routes from the generated server, request
// validation against the embedded spec, the auth table, the registry.
func NewServer(opts Options) (*Server, error) {
	if opts.Instances == nil || opts.Images == nil {
		return nil, errors.New("api: Instances and Images are required")
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 1 << 20
	}
	if opts.Keepalive <= 0 {
		opts.Keepalive = 15 * time.Second
	}
	v, err := auth.NewVerifier(opts.Secret, opts.Now)
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	s := &server{opts: opts, log: logger(opts.Logger), verifier: v, policies: routePolicies()}
	if s.metrics, err = newHTTPMetrics(opts.Metrics); err != nil {
		return nil, err
	}
	if s.specJSON, err = gen.GetSpecJSON(); err != nil {
		return nil, fmt.Errorf("api: embedded spec: %w", err)
	}
	if s.specYAML, err = yaml.JSONToYAML(s.specJSON); err != nil {
		return nil, fmt.Errorf("api: embedded spec: %w", err)
	}
	validator, err := s.requestValidator(false)
	if err != nil {
		return nil, err
	}
	streamValidator, err := s.requestValidator(true)
	if err != nil {
		return nil, err
	}
	var reg http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSONError(w, http.StatusNotFound, CodeNotFound, "the built-in registry is disabled")
	})
	if opts.RegistryDir != "" {
		s.registry, err = registry.New(registry.Options{Dir: opts.RegistryDir, Verifier: v, Importer: opts.Images, Logger: s.log,
			Limits: opts.RegistryLimits})
		if err != nil {
			return nil, err
		}
		reg = s.registry
	}

	r := chi.NewRouter()
	r.Use(s.observe)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeJSONError(w, http.StatusNotFound, CodeNotFound, "no such route: "+r.URL.Path)
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		writeJSONError(w, http.StatusMethodNotAllowed, CodeMethodNotAllowed, r.Method+" is not allowed on "+r.URL.Path)
	})
	r.Group(func(r chi.Router) {
		r.Use(s.authorize)
		r.Get("/spec.json", s.serveSpec(s.specJSON, "application/json"))
		r.Get("/spec.yaml", s.serveSpec(s.specYAML, "application/yaml"))
		r.Handle("/v2/*", reg)
	})
	r.Group(func(r chi.Router) {
		// Streamed bodies (volumes/from-archive) skip the JSON body limit,
		// buffering and body validation; their parameters are validated.
		r.Use(s.authorize, unlessStreamed(maxBody(opts.MaxBodyBytes)), unlessStreamed(strictJSON),
			unlessStreamed(validator), onlyStreamed(streamValidator))
		strict := gen.NewStrictHandlerWithOptions(s, []gen.StrictMiddlewareFunc{s.streamingDeadlines}, gen.StrictHTTPServerOptions{
			RequestErrorHandlerFunc: func(w http.ResponseWriter, r *http.Request, err error) {
				s.writeError(w, r, &Error{Status: http.StatusBadRequest, Code: CodeInvalidRequest, Message: err.Error()})
			},
			ResponseErrorHandlerFunc: s.writeError,
		})
		gen.HandlerWithOptions(strict, gen.ChiServerOptions{BaseRouter: r, ErrorHandlerFunc: s.paramError})
	})
	// WebSocket endpoints: documented in the spec, served by hand (the
	// strict server cannot upgrade). No body bound or body validation: they
	// have no request body, and their messages are checked in ws.go.
	r.Group(func(r chi.Router) {
		r.Use(s.authorize)
		r.Get("/instances/{id}/exec", s.serveExec)
		r.Get("/instances/{id}/cp", s.serveCopy)
	})
	s.router = r
	return &Server{s: s}, nil
}

func (s *server) serveSpec(body []byte, contentType string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", contentType)
		_, _ = w.Write(body)
	}
}

// isStreamingOp reports the operations that may run for minutes: the
// server's write deadline is lifted for them.
func isStreamingOp(op string) bool {
	switch op {
	case "GetInstanceLogs", "WaitForInstanceState", "StreamEvents", "StreamInstanceEvents":
		return true
	}
	return false
}

// streamingDeadlines lifts the connection write deadline for long-running
// operations, so a server-wide WriteTimeout protects ordinary requests
// without cutting a follow or a 5-minute wait short.
func (s *server) streamingDeadlines(f gen.StrictHandlerFunc, op string) gen.StrictHandlerFunc {
	if !isStreamingOp(op) {
		return f
	}
	return func(ctx context.Context, w http.ResponseWriter, r *http.Request, req any) (any, error) {
		_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
		return f(ctx, w, r, req)
	}
}
