package api

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"hypeman/internal/api/gen"
	"hypeman/internal/auth"
	"hypeman/internal/images"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
)

// --- system ---

func (s *server) GetHealth(ctx context.Context, _ gen.GetHealthRequestObject) (gen.GetHealthResponseObject, error) {
	return gen.GetHealth200JSONResponse{Status: gen.Ok}, nil
}

func (s *server) GetCapabilities(ctx context.Context, _ gen.GetCapabilitiesRequestObject) (gen.GetCapabilitiesResponseObject, error) {
	var c Capabilities
	if s.opts.Capabilities != nil {
		c = s.opts.Capabilities(ctx)
	}
	out := gen.GetCapabilities200JSONResponse{
		Version:           s.opts.Version,
		Hypervisor:        c.Hypervisor,
		Hypervisors:       c.Hypervisors,
		Accelerator:       string(c.Accelerator.Accel),
		AcceleratorReason: c.Accelerator.Reason,
		Networking:        gen.NetworkingCapability{Mode: c.NetworkMode, Reason: optString(c.NetworkReason)},
	}
	if out.Hypervisors == nil {
		out.Hypervisors = []string{}
	}
	if out.Networking.Mode == "" {
		out.Networking.Mode = "none"
	}
	return out, nil
}

// --- instances ---

// toAPIInstance converts a manager instance to the API's. It fails only if
// the spec and the restart/health packages disagree on a shape (a bug).
func toAPIInstance(in *instances.Instance) (gen.Instance, error) {
	out := gen.Instance{
		Id: in.ID, Name: in.Name, Image: in.Image, ImageDigest: optString(in.ImageDigest),
		State: gen.InstanceState(in.State), StateError: in.StateError,
		Size: in.Size, Vcpus: in.VCPUs, OverlaySize: in.OverlaySize,
		CreatedAt: in.CreatedAt, StartedAt: in.StartedAt, StoppedAt: in.StoppedAt,
		ExitCode: in.ExitCode, ExitMessage: in.ExitMessage,
		HasSnapshot: in.HasSnapshot, Hypervisor: in.Hypervisor,
	}
	if in.Env != nil {
		env := in.Env
		out.Env = &env
	}
	if in.Tags != nil {
		tags := in.Tags
		out.Tags = &tags
	}
	if in.Entrypoint != nil {
		ep := in.Entrypoint
		out.Entrypoint = &ep
	}
	if in.Cmd != nil {
		cmd := in.Cmd
		out.Cmd = &cmd
	}
	if n := in.Network; n != nil {
		out.Network = &gen.InstanceNetwork{Enabled: n.Enabled, Ip: optString(n.IP), Mac: optString(n.MAC)}
	}
	if err := policyFields(in, &out); err != nil {
		return gen.Instance{}, err
	}
	return out, nil
}

func (s *server) ListInstances(ctx context.Context, req gen.ListInstancesRequestObject) (gen.ListInstancesResponseObject, error) {
	var opts instances.ListOptions
	if req.Params.State != nil {
		st, err := state.Parse(string(*req.Params.State))
		if err != nil {
			return nil, newError(http.StatusBadRequest, CodeInvalidState, "%v", err)
		}
		opts.State = st
	}
	list, err := s.opts.Instances.List(ctx, opts)
	if err != nil {
		return nil, err
	}
	out := make(gen.ListInstances200JSONResponse, 0, len(list))
	for _, in := range list {
		api, err := toAPIInstance(in)
		if err != nil {
			return nil, err
		}
		out = append(out, api)
	}
	return out, nil
}

func (s *server) CreateInstance(ctx context.Context, req gen.CreateInstanceRequestObject) (gen.CreateInstanceResponseObject, error) {
	b := req.Body
	if b == nil {
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "request body is required")
	}
	p := instances.CreateParams{
		Name:           b.Name,
		Image:          b.Image,
		Size:           deref(b.Size),
		OverlaySize:    deref(b.OverlaySize),
		VCPUs:          deref(b.Vcpus),
		Env:            deref(b.Env),
		Entrypoint:     deref(b.Entrypoint),
		Cmd:            deref(b.Cmd),
		Tags:           deref(b.Tags),
		SkipGuestAgent: deref(b.SkipGuestAgent),
		// Pulling an image the store lacks is an image write.
		NoPull: !principalAllows(ctx, auth.ImageWrite),
	}
	if b.Network != nil {
		p.NetworkEnabled = b.Network.Enabled
	}
	var err error
	if p.RestartPolicy, err = toRestartPolicy(b.RestartPolicy); err != nil {
		return nil, err
	}
	if p.HealthCheck, err = toHealthCheck(b.HealthCheck); err != nil {
		return nil, err
	}
	in, err := s.opts.Instances.Create(ctx, p)
	if err != nil {
		return nil, err
	}
	out, err := toAPIInstance(in)
	if err != nil {
		return nil, err
	}
	return gen.CreateInstance201JSONResponse(out), nil
}

func (s *server) GetInstance(ctx context.Context, req gen.GetInstanceRequestObject) (gen.GetInstanceResponseObject, error) {
	in, err := s.opts.Instances.Get(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	out, err := toAPIInstance(in)
	if err != nil {
		return nil, err
	}
	return gen.GetInstance200JSONResponse(out), nil
}

func (s *server) DeleteInstance(ctx context.Context, req gen.DeleteInstanceRequestObject) (gen.DeleteInstanceResponseObject, error) {
	if err := s.opts.Instances.Delete(ctx, req.Id); err != nil {
		return nil, err
	}
	return gen.DeleteInstance204Response{}, nil
}

func (s *server) StartInstance(ctx context.Context, req gen.StartInstanceRequestObject) (gen.StartInstanceResponseObject, error) {
	in, err := s.opts.Instances.Start(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	out, err := toAPIInstance(in)
	if err != nil {
		return nil, err
	}
	return gen.StartInstance200JSONResponse(out), nil
}

func (s *server) StopInstance(ctx context.Context, req gen.StopInstanceRequestObject) (gen.StopInstanceResponseObject, error) {
	in, err := s.opts.Instances.Stop(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	out, err := toAPIInstance(in)
	if err != nil {
		return nil, err
	}
	return gen.StopInstance200JSONResponse(out), nil
}

func (s *server) GetInstanceStats(ctx context.Context, req gen.GetInstanceStatsRequestObject) (gen.GetInstanceStatsResponseObject, error) {
	st, err := s.opts.Instances.Stats(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	out := gen.GetInstanceStats200JSONResponse{
		InstanceId: st.InstanceID, Running: st.Running,
		CpuSeconds: st.CPUSeconds, RssBytes: st.RSSBytes,
		MemoryBytes: st.MemoryBytes, Vcpus: st.VCPUs,
		OverlayAllocatedBytes: st.OverlayAllocatedBytes, OverlaySizeBytes: st.OverlaySizeBytes,
		UptimeSeconds: st.UptimeSeconds,
	}
	if st.Pid != 0 {
		pid := st.Pid
		out.Pid = &pid
	}
	return out, nil
}

func (s *server) StatInstancePath(ctx context.Context, req gen.StatInstancePathRequestObject) (gen.StatInstancePathResponseObject, error) {
	if s.opts.Stat == nil {
		return nil, newError(http.StatusNotImplemented, CodeNotImplemented, "stat needs the guest agent, which this server does not provide yet")
	}
	if strings.ContainsRune(req.Params.Path, 0) {
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "invalid query parameter \"path\": contains a NUL byte")
	}
	ps, err := s.opts.Stat.StatPath(ctx, req.Id, req.Params.Path, deref(req.Params.FollowLinks))
	if err != nil {
		return nil, err
	}
	out := gen.StatInstancePath200JSONResponse{Exists: ps.Exists, Error: optString(ps.Error)}
	if ps.Exists {
		mode, size := int64(ps.Mode), ps.Size
		out.IsDir, out.IsFile, out.IsSymlink = &ps.IsDir, &ps.IsFile, &ps.IsSymlink
		out.Mode, out.Size = &mode, &size
		out.LinkTarget = optString(ps.LinkTarget)
	}
	return out, nil
}

// --- images ---

func toAPIImage(img *images.Image) gen.Image {
	out := gen.Image{
		Name: img.Name, Status: gen.ImageStatus(img.Status),
		Digest: optString(img.Digest), Error: optString(img.Error), ErrorKind: optString(img.ErrorKind),
		WorkingDir: optString(img.Config.WorkingDir), CreatedAt: img.CreatedAt,
	}
	if !img.UpdatedAt.IsZero() {
		t := img.UpdatedAt
		out.UpdatedAt = &t
	}
	if img.SizeBytes > 0 {
		n := img.SizeBytes
		out.SizeBytes = &n
	}
	if img.Config.Entrypoint != nil {
		ep := img.Config.Entrypoint
		out.Entrypoint = &ep
	}
	if img.Config.Cmd != nil {
		cmd := img.Config.Cmd
		out.Cmd = &cmd
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

func (s *server) ListImages(ctx context.Context, _ gen.ListImagesRequestObject) (gen.ListImagesResponseObject, error) {
	list, err := s.opts.Images.List(ctx)
	if err != nil {
		return nil, err
	}
	out := make(gen.ListImages200JSONResponse, 0, len(list))
	for i := range list {
		out = append(out, toAPIImage(&list[i]))
	}
	return out, nil
}

func (s *server) CreateImage(ctx context.Context, req gen.CreateImageRequestObject) (gen.CreateImageResponseObject, error) {
	if req.Body == nil {
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "request body is required")
	}
	img, err := s.opts.Images.Ensure(ctx, req.Body.Name)
	if errors.Is(err, images.ErrInvalidReference) {
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "invalid name: %v", err)
	}
	if err != nil {
		return nil, err
	}
	return gen.CreateImage202JSONResponse(toAPIImage(img)), nil
}

func (s *server) GetImage(ctx context.Context, req gen.GetImageRequestObject) (gen.GetImageResponseObject, error) {
	img, err := s.opts.Images.Get(ctx, req.Name)
	if err != nil {
		return nil, err
	}
	return gen.GetImage200JSONResponse(toAPIImage(img)), nil
}

// DeleteImage refuses (409) while an instance uses the image: by name (its
// next start would re-pull it) or by digest (its disk would go away).
// The check and the delete are not atomic with instance creation; a create
// racing a delete fails at boot with the image missing, which is safe.
func (s *server) DeleteImage(ctx context.Context, req gen.DeleteImageRequestObject) (gen.DeleteImageResponseObject, error) {
	img, err := s.opts.Images.Get(ctx, req.Name)
	if err != nil {
		return nil, err
	}
	list, err := s.opts.Instances.List(ctx, instances.ListOptions{})
	if err != nil {
		return nil, err
	}
	var users []string
	for _, in := range list {
		n, _ := images.NormalizeName(in.Image)
		if n == img.Name || in.Image == img.Name || (img.Digest != "" && in.ImageDigest == img.Digest) {
			users = append(users, in.Name)
		}
	}
	if len(users) > 0 {
		return nil, newError(http.StatusConflict, CodeConflict, "image %s is used by instance(s): %s", img.Name, strings.Join(users, ", "))
	}
	if err := s.opts.Images.Delete(ctx, req.Name); err != nil {
		return nil, err
	}
	return gen.DeleteImage204Response{}, nil
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
