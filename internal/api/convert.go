package api

// Conversions between the wire types (internal/api/gen, generated from
// openapi.yaml) and the managers' domain types. They are explicit field by
// field, never a JSON round trip: the domain can change shape without
// changing the wire, and a wire field the domain cannot hold fails to
// compile here instead of vanishing.

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"hypeman/internal/api/gen"
	"hypeman/internal/durations"
	"hypeman/internal/health"
	"hypeman/internal/hypervisor"
	"hypeman/internal/images"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/network/ingress"
	"hypeman/internal/phases"
	"hypeman/internal/restart"
)

// hypervisorName is the wire name of the hypervisor an instance runs on.
// The domain says "qemu" (the driver); the board it runs is QEMU's
// microvm, which hypeman names qemu-microvm.
func hypervisorName(domain string) gen.Hypervisor {
	if domain == "" || domain == "qemu" {
		return gen.HypervisorQemuMicrovm
	}
	return gen.Hypervisor(domain)
}

// checkHypervisor accepts the hypervisors this server runs: qemu-microvm,
// and qemu (the same QEMU; reported as qemu-microvm).
func checkHypervisor(field string, h *gen.Hypervisor) error {
	if h == nil {
		return nil
	}
	switch *h {
	case gen.HypervisorQemuMicrovm, gen.HypervisorQemu:
		return nil
	}
	return &instances.InvalidArgumentError{Field: field, Reason: fmt.Sprintf(
		"%q is not available on this server (it runs QEMU's microvm board: use %q, or omit the field)", *h, gen.HypervisorQemuMicrovm)}
}

// --- instances ---

// toAPIInstance converts a manager instance (with its phase accounting) to
// the wire shape.
func toAPIInstance(in *instances.Instance, ph phases.View) gen.Instance {
	out := gen.Instance{
		Id: in.ID, Name: in.Name, Image: in.Image, ImageDigest: optString(in.ImageDigest),
		State: gen.InstanceState(in.State), StateError: in.StateError,
		Size: in.Size, Vcpus: in.VCPUs, OverlaySize: in.OverlaySize,
		CreatedAt: in.CreatedAt, StartedAt: in.StartedAt, StoppedAt: in.StoppedAt, ExpiresAt: in.ExpiresAt,
		ExitCode: in.ExitCode, ExitMessage: in.ExitMessage,
		HasSnapshot: in.HasSnapshot, Hypervisor: hypervisorName(in.Hypervisor),
		ForkCount:         &in.ForkCount,
		Platform:          optString(in.Platform),
		Env:               optMap(in.Env),
		Tags:              optTags(in.Tags),
		Entrypoint:        optSlice(in.Entrypoint),
		Cmd:               optSlice(in.Cmd),
		StopTimeout:       optString(in.StopTimeout),
		WorkingDir:        optString(in.WorkingDir),
		PhaseDurationsMs:  ph.DurationsMs,
		CurrentPhase:      ph.Current,
		CurrentPhaseSince: ph.Since,
	}
	if out.PhaseDurationsMs == nil {
		out.PhaseDurationsMs = map[string]int64{}
	}
	out.HotplugSize, out.DiskIoBps = optString(in.HotplugSize), optString(in.DiskIOBps)
	if n := in.Network; n != nil {
		out.Network = &gen.InstanceNetwork{Enabled: n.Enabled, Ip: optString(n.IP), Mac: optString(n.MAC),
			BandwidthDownload: optString(in.BandwidthDownload), BandwidthUpload: optString(in.BandwidthUpload)}
		if n.Enabled {
			out.Network.Name = optString("default")
		}
	}
	out.AutoStandby = toAPIAutoStandby(in.AutoStandby)
	if in.RestartPolicy != nil {
		out.RestartPolicy = toAPIRestartPolicy(*in.RestartPolicy)
	}
	if in.RestartStatus != nil {
		out.RestartStatus = toAPIRestartStatus(*in.RestartStatus)
	}
	if in.HealthCheck != nil {
		out.HealthCheck = toAPIHealthCheck(*in.HealthCheck)
	}
	if in.HealthStatus != nil {
		out.HealthStatus = toAPIHealthStatus(*in.HealthStatus)
	}
	out.SnapshotPolicy = toAPISnapshotPolicy(in.SnapshotPolicy)
	out.Volumes = toAPIVolumeMounts(in.Volumes)
	if in.StartMode != "" {
		sm := gen.InstanceStartMode(in.StartMode)
		out.StartMode = &sm
	}
	return out
}

// volumeMountsFromAPI converts a create request's volumes field by field
// (validation is the manager's: it names volumes[i].<field>).
func volumeMountsFromAPI(in []gen.VolumeMount) []instances.VolumeMount {
	if len(in) == 0 {
		return nil
	}
	out := make([]instances.VolumeMount, len(in))
	for i, v := range in {
		out[i] = instances.VolumeMount{VolumeID: v.VolumeId, MountPath: v.MountPath,
			ReadOnly: deref(v.Readonly), Overlay: deref(v.Overlay), OverlaySize: deref(v.OverlaySize)}
	}
	return out
}

func toAPIVolumeMounts(in []instances.VolumeMount) *[]gen.VolumeMount {
	if len(in) == 0 {
		return nil
	}
	out := make([]gen.VolumeMount, len(in))
	for i, v := range in {
		out[i] = gen.VolumeMount{VolumeId: v.VolumeID, MountPath: v.MountPath, Readonly: &v.ReadOnly}
		if v.Overlay {
			out[i].Overlay, out[i].OverlaySize = &v.Overlay, optString(v.OverlaySize)
		}
	}
	return &out
}

// phaseEntered is the best-known time the instance entered its current
// state, for phase accounting that missed the transition.
func phaseEntered(in *instances.Instance) time.Time {
	switch in.State {
	case state.Running, state.Initializing:
		if in.StartedAt != nil {
			return *in.StartedAt
		}
	case state.Stopped:
		if in.StoppedAt != nil {
			return *in.StoppedAt
		}
		return in.CreatedAt
	}
	return time.Time{}
}

// --- restart policy ---

func toAPIRestartPolicy(p restart.Policy) *gen.RestartPolicy {
	kind := gen.RestartPolicyPolicy(p.Kind())
	out := &gen.RestartPolicy{Policy: &kind, MaxAttempts: &p.MaxAttempts}
	out.Backoff = optDuration(p.Backoff)
	out.MaxBackoff = optDuration(p.MaxBackoff)
	out.StableAfter = optDuration(p.StableAfter)
	return out
}

// restartPolicyFromAPI fills the defaults of the fields left out and parses
// the durations; range checks are the manager's (restart.Policy.Validate).
// nil stays nil; `{}` is the never policy.
func restartPolicyFromAPI(in *gen.RestartPolicy) (*restart.Policy, error) {
	if in == nil {
		return nil, nil
	}
	kind := restart.Never
	if in.Policy != nil {
		kind = restart.Kind(*in.Policy)
	}
	p := restart.DefaultPolicy(kind)
	if in.MaxAttempts != nil {
		p.MaxAttempts = *in.MaxAttempts
	}
	for name, f := range map[string]struct {
		s *string
		d *time.Duration
	}{
		"backoff": {in.Backoff, &p.Backoff}, "max_backoff": {in.MaxBackoff, &p.MaxBackoff}, "stable_after": {in.StableAfter, &p.StableAfter},
	} {
		if f.s == nil {
			continue
		}
		d, err := time.ParseDuration(*f.s)
		if err != nil {
			return nil, &restart.FieldError{Field: restart.FieldPrefix + name, Reason: fmt.Sprintf("%q is not a Go duration (e.g. 5s, 1m30s)", *f.s)}
		}
		*f.d = d
	}
	// Only backoff given: keep max_backoff at least backoff (a fixed
	// delay, hypeman's behaviour) rather than failing the range check.
	if in.Backoff != nil && in.MaxBackoff == nil && p.MaxBackoff < p.Backoff {
		p.MaxBackoff = p.Backoff
	}
	return &p, nil
}

func toAPIRestartStatus(s restart.Status) *gen.RestartStatus {
	out := &gen.RestartStatus{Restarts: &s.Restarts, Attempts: &s.Attempts, LastAttemptAt: optTime(s.LastAttemptAt), NextAttemptAt: optTime(s.NextAttemptAt)}
	if s.BlockedReason != "" {
		r := gen.RestartStatusBlockedReason(s.BlockedReason)
		out.BlockedReason = &r
	}
	if s.LastReason != "" {
		r := gen.RestartStatusLastReason(s.LastReason)
		out.LastReason = &r
	}
	return out
}

// --- health check ---

func toAPIHealthCheck(c health.Check) *gen.HealthCheck {
	typ := gen.HealthCheckType(c.Type)
	if c.IsZero() {
		none := gen.HealthCheckNone
		return &gen.HealthCheck{Type: &none}
	}
	out := &gen.HealthCheck{
		Type:             &typ,
		Interval:         optDuration(c.Interval),
		Timeout:          optDuration(c.Timeout),
		StartPeriod:      optDuration(c.StartPeriod),
		FailureThreshold: &c.FailureThreshold,
		SuccessThreshold: &c.SuccessThreshold,
	}
	if c.ReportOnly {
		out.ReportOnly = &c.ReportOnly // absent when false, as upstream's checks
	}
	switch c.Type {
	case health.HTTP:
		scheme := gen.HealthCheckHTTPScheme(c.Scheme)
		out.Http = &gen.HealthCheckHTTP{Port: c.Port, Path: &c.Path, Scheme: &scheme, ExpectedStatus: &c.ExpectedStatus}
	case health.TCP:
		out.Tcp = &gen.HealthCheckTCP{Port: c.Port}
	case health.Exec:
		out.Exec = &gen.HealthCheckExec{Command: slices.Clone(c.Command), WorkingDir: optString(c.WorkingDir)}
	}
	return out
}

// healthCheckFromAPI converts the nested wire check to the flat domain one,
// filling defaults. nil stays nil; `{}` and `{"type":"none"}` are the zero
// Check (no check). Range checks are the manager's (health.Check.Validate).
func healthCheckFromAPI(in *gen.HealthCheck) (*health.Check, error) {
	if in == nil {
		return nil, nil
	}
	fe := func(field, format string, args ...any) error {
		return &health.FieldError{Field: health.FieldPrefix + field, Reason: fmt.Sprintf(format, args...)}
	}
	typ := gen.HealthCheckNone
	if in.Type != nil {
		typ = *in.Type
	}
	given := map[string]bool{"http": in.Http != nil, "tcp": in.Tcp != nil, "exec": in.Exec != nil}
	if typ == gen.HealthCheckNone {
		if in.Type == nil {
			given["report_only"] = deref(in.ReportOnly)
			for name, set := range given {
				if set {
					return nil, fe("type", "is required with %s (http, tcp or exec)", name)
				}
			}
		}
		return &health.Check{}, nil
	}
	for name, set := range given {
		if set && name != string(typ) {
			return nil, fe(name, "only applies to %s checks (type is %s)", name, typ)
		}
	}
	if !given[string(typ)] {
		return nil, fe(string(typ), "is required for a %s check", typ)
	}
	c := health.DefaultCheck(health.Type(typ))
	switch typ {
	case gen.HealthCheckHTTPType:
		h := in.Http
		c.Port = h.Port
		if h.Path != nil {
			c.Path = *h.Path
		}
		if h.Scheme != nil {
			c.Scheme = string(*h.Scheme)
		}
		if h.ExpectedStatus != nil {
			c.ExpectedStatus = *h.ExpectedStatus
		}
	case gen.HealthCheckTCPType:
		c.Port = in.Tcp.Port
	case gen.HealthCheckExecType:
		c.Command = slices.Clone(in.Exec.Command)
		if in.Exec.WorkingDir != nil {
			c.WorkingDir = *in.Exec.WorkingDir
		}
	}
	for name, f := range map[string]struct {
		s *string
		d *time.Duration
	}{"interval": {in.Interval, &c.Interval}, "timeout": {in.Timeout, &c.Timeout}, "start_period": {in.StartPeriod, &c.StartPeriod}} {
		if f.s == nil {
			continue
		}
		d, err := time.ParseDuration(*f.s)
		if err != nil {
			return nil, fe(name, "%q is not a Go duration (e.g. 10s, 1m30s)", *f.s)
		}
		*f.d = d
	}
	if in.Timeout == nil && c.Timeout > c.Interval {
		// A short interval alone must not fail on the default timeout.
		c.Timeout = c.Interval
	}
	if in.FailureThreshold != nil {
		c.FailureThreshold = *in.FailureThreshold
	}
	if in.SuccessThreshold != nil {
		c.SuccessThreshold = *in.SuccessThreshold
	}
	c.ReportOnly = deref(in.ReportOnly)
	return &c, nil
}

func toAPIHealthStatus(s health.Status) *gen.InstanceHealthStatus {
	return &gen.InstanceHealthStatus{
		Status:               gen.InstanceHealthStatusStatus(s.Status),
		ConsecutiveSuccesses: s.ConsecutiveSuccesses,
		ConsecutiveFailures:  s.ConsecutiveFailures,
		LastCheckedAt:        optTime(s.LastCheckAt),
		LastSuccessAt:        optTime(s.LastSuccessAt),
		LastFailureAt:        optTime(s.LastFailureAt),
		LastError:            optString(s.LastError),
	}
}

// --- snapshots ---

func toAPISnapshot(sn *instances.Snapshot) gen.Snapshot {
	out := gen.Snapshot{
		Id: sn.ID, Name: optString(sn.Name), Kind: gen.SnapshotKind(sn.Kind),
		SourceInstanceId: sn.SourceInstanceID, SourceInstanceName: sn.SourceInstanceName,
		SourceHypervisor: hypervisorName(sn.Hypervisor),
		Image:            optString(sn.Image), ImageDigest: optString(sn.ImageDigest),
		CreatedAt: sn.CreatedAt, SizeBytes: sn.SizeBytes, MemoryBytes: optInt64(sn.MemoryBytes),
		Tags: optTags(sn.Tags),
	}
	st := gen.SnapshotCompressionState(sn.CompressionState)
	if st == "" {
		st = gen.CompressionNone
	}
	out.CompressionState = &st
	out.CompressionError = optString(sn.CompressionError)
	out.Compression = toAPICompression(sn.Compression)
	out.CompressedSizeBytes = optInt64(sn.CompressedBytes)
	out.UncompressedSizeBytes = optInt64(sn.UncompressedBytes)
	return out
}

// --- images ---

func toAPIImage(img *images.Image) gen.Image {
	out := gen.Image{
		Name: img.Name, Digest: img.Digest, Status: gen.ImageStatus(img.Status),
		Platform: optString(img.Platform), Tags: optTags(img.Tags),
		Error: optString(img.Error), ErrorKind: optString(img.ErrorKind),
		WorkingDir: optString(img.Config.WorkingDir), CreatedAt: img.CreatedAt,
		Entrypoint: optSlice(img.Config.Entrypoint), Cmd: optSlice(img.Config.Cmd),
	}
	if !img.UpdatedAt.IsZero() {
		t := img.UpdatedAt
		out.UpdatedAt = &t
	}
	if img.SizeBytes > 0 {
		out.SizeBytes = optInt64(img.SizeBytes)
	}
	if len(img.Config.Env) > 0 {
		env := make(map[string]string, len(img.Config.Env))
		for _, kv := range img.Config.Env {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
		out.Env = &env
	}
	switch img.Status {
	case images.StatusPending, images.StatusPulling, images.StatusConverting:
		p := img.Progress
		out.Progress = &gen.ImageProgress{BytesDone: p.BytesDone, BytesTotal: p.BytesTotal, LayersDone: p.LayersDone, LayersTotal: p.LayersTotal}
	}
	return out
}

// --- ingresses ---

func toAPIIngress(ing *ingress.Ingress) gen.Ingress {
	out := gen.Ingress{Id: ing.ID, Name: ing.Name, Tags: optTags(ing.Tags), CreatedAt: ing.CreatedAt, Rules: make([]gen.IngressRule, 0, len(ing.Rules))}
	for _, r := range ing.Rules {
		port, off := r.Match.Port, false
		rule := gen.IngressRule{
			Match:  gen.IngressMatch{Hostname: optString(r.Match.Hostname), Port: &port},
			Target: gen.IngressTarget{Instance: r.Target.Instance, Port: r.Target.Port},
			Tls:    &off, RedirectHttp: &off,
		}
		if a := r.RequestHeaderAuth; a != nil {
			rule.RequestHeaderAuth = &gen.IngressRequestHeaderAuth{Header: a.Header, Value: a.Value}
		}
		if r.WakeStopped { // our addition: absent unless set (hypeman's shape otherwise)
			rule.WakeStopped = &r.WakeStopped
		}
		out.Rules = append(out.Rules, rule)
	}
	return out
}

func ingressFromAPI(b *gen.CreateIngressRequest) (ingress.CreateRequest, error) {
	cr := ingress.CreateRequest{Name: b.Name, Tags: derefTags(b.Tags), Rules: make([]ingress.Rule, 0, len(b.Rules))}
	for i, r := range b.Rules {
		if deref(r.Tls) {
			return cr, &instances.InvalidArgumentError{Field: fmt.Sprintf("rules[%d].tls", i),
				Reason: "TLS termination needs certificates issued through ACME, which this server does not do; terminate TLS in front of the ingress or omit tls"}
		}
		if deref(r.RedirectHttp) {
			return cr, &instances.InvalidArgumentError{Field: fmt.Sprintf("rules[%d].redirect_http", i),
				Reason: "only applies with tls, which this server does not offer; omit it"}
		}
		rule := ingress.Rule{
			Match:       ingress.Match{Hostname: deref(r.Match.Hostname), Port: deref(r.Match.Port)},
			Target:      ingress.Target{Instance: r.Target.Instance, Port: r.Target.Port},
			WakeStopped: deref(r.WakeStopped),
		}
		if a := r.RequestHeaderAuth; a != nil {
			rule.RequestHeaderAuth = &ingress.HeaderAuth{Header: a.Header, Value: a.Value}
		}
		cr.Rules = append(cr.Rules, rule)
	}
	return cr, nil
}

// --- helpers ---

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func optString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func optInt64(n int64) *int64 {
	if n == 0 {
		return nil
	}
	return &n
}

func optTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func optDuration(d time.Duration) *string {
	s := durations.Format(d)
	return &s
}

func optSlice(v []string) *[]string {
	if v == nil {
		return nil
	}
	c := slices.Clone(v)
	return &c
}

func optMap(m map[string]string) *map[string]string {
	if m == nil {
		return nil
	}
	c := maps.Clone(m)
	return &c
}

func optTags(m map[string]string) *gen.Tags {
	if len(m) == 0 {
		return nil
	}
	c := gen.Tags(maps.Clone(m))
	return &c
}

func derefTags(t *gen.Tags) map[string]string {
	if t == nil {
		return nil
	}
	return maps.Clone(map[string]string(*t))
}

// compressionFromAPI converts a SnapshotCompressionConfig (nil stays nil:
// the next level of precedence decides). field prefixes the error's field
// ("compression", "snapshot_policy.compression").
func compressionFromAPI(field string, c *gen.SnapshotCompressionConfig) (*hypervisor.Compression, error) {
	if c == nil {
		return nil, nil
	}
	var algo string
	if c.Algorithm != nil {
		algo = string(*c.Algorithm)
	}
	out, err := hypervisor.NewCompression(c.Enabled, algo, c.Level)
	if err != nil {
		var ce *hypervisor.CompressionError
		if errors.As(err, &ce) {
			return nil, &instances.InvalidArgumentError{Field: field + strings.TrimPrefix(ce.Field, "compression"), Reason: ce.Reason}
		}
		return nil, err
	}
	return &out, nil
}

func toAPICompression(c hypervisor.Compression) *gen.SnapshotCompressionConfig {
	out := &gen.SnapshotCompressionConfig{Enabled: c.Enabled()}
	if c.Enabled() {
		algo, level := gen.SnapshotCompressionConfigAlgorithm(c.Algorithm), c.Level
		out.Algorithm, out.Level = &algo, &level
	}
	return out
}

// delayFromAPI parses an optional Go duration (nil stays nil).
func delayFromAPI(field string, s *string) (*time.Duration, error) {
	if s == nil {
		return nil, nil
	}
	d, err := time.ParseDuration(*s)
	if err != nil {
		return nil, &instances.InvalidArgumentError{Field: field, Reason: fmt.Sprintf("%q is not a Go duration (e.g. 30s, 5m)", *s)}
	}
	return &d, nil
}

// snapshotPolicyFromAPI converts a create's snapshot policy (nil stays nil).
func snapshotPolicyFromAPI(p *gen.SnapshotPolicy) (*instances.SnapshotPolicy, error) {
	if p == nil {
		return nil, nil
	}
	c, err := compressionFromAPI("snapshot_policy.compression", p.Compression)
	if err != nil {
		return nil, err
	}
	out := &instances.SnapshotPolicy{Compression: c}
	d, err := delayFromAPI("snapshot_policy.standby_compression_delay", p.StandbyCompressionDelay)
	if err != nil {
		return nil, err
	}
	if d != nil {
		out.StandbyCompressionDelay = *d
	}
	return out, nil
}

func toAPISnapshotPolicy(p *instances.SnapshotPolicy) *gen.SnapshotPolicy {
	if p == nil {
		return nil
	}
	out := &gen.SnapshotPolicy{}
	if p.Compression != nil {
		out.Compression = toAPICompression(*p.Compression)
	}
	if p.StandbyCompressionDelay != 0 {
		out.StandbyCompressionDelay = optDuration(p.StandbyCompressionDelay)
	}
	return out
}
