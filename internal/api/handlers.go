package api

import (
	"context"
	"errors"
	"net/http"
	"regexp"
	"runtime"
	"strings"
	"time"

	"hypeman/internal/api/gen"
	"hypeman/internal/auth"
	"hypeman/internal/expiry"
	"hypeman/internal/images"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/phases"
	"hypeman/internal/tags"
)

// apiVersion is the hypeman API contract this server speaks.
const apiVersion = "0.3.0"

// --- system ---

func (s *server) GetHealth(ctx context.Context, _ gen.GetHealthRequestObject) (gen.GetHealthResponseObject, error) {
	return gen.GetHealth200JSONResponse{Status: gen.Ok}, nil
}

// runtimeNames are the hypervisors hypeman knows, sorted by name.
var runtimeNames = []gen.Hypervisor{gen.HypervisorCloudHypervisor, gen.HypervisorFirecracker, gen.HypervisorQemu, gen.HypervisorQemuMicrovm, gen.HypervisorVz}

func (s *server) GetCapabilities(ctx context.Context, _ gen.GetCapabilitiesRequestObject) (gen.GetCapabilitiesResponseObject, error) {
	var c Capabilities
	if s.opts.Capabilities != nil {
		c = s.opts.Capabilities(ctx)
	}
	if c.Platform == "" {
		c.Platform = "linux/" + runtime.GOARCH
	}
	mode := c.NetworkMode
	if mode == "" {
		mode = "none"
	}
	model := gen.CapabilitiesNetworkModel(mode)
	if mode == "user" {
		model = "nat" // QEMU's user-mode networking is hypervisor-provided NAT
	}
	out := gen.GetCapabilities200JSONResponse{
		Server:         gen.CapabilitiesServer{Version: s.opts.Version, ApiVersion: apiVersion},
		Host:           gen.CapabilitiesHost{Os: runtime.GOOS, Arch: runtime.GOARCH},
		DefaultRuntime: gen.CapabilitiesDefaultRuntime{Name: string(gen.HypervisorQemuMicrovm), Available: true},
		Network: gen.CapabilitiesNetwork{
			Model: model, Gateway: optString(c.Gateway), Subnet: optString(c.Subnet), GuestToGuest: c.GuestToGuest,
		},
		Images:            gen.CapabilitiesImages{Platforms: []string{c.Platform}, DefaultPlatform: c.Platform},
		Features:          s.features(),
		Accelerator:       string(c.Accelerator.Accel),
		AcceleratorReason: c.Accelerator.Reason,
		Networking:        gen.NetworkingCapability{Mode: mode, Reason: optString(c.NetworkReason)},
		WarmCreate: &gen.WarmCreateCapability{
			Enabled: c.WarmEnabled, Templates: c.WarmStatus.Templates, Reason: optString(c.WarmReason),
		},
	}
	for _, name := range runtimeNames {
		rt := gen.CapabilitiesRuntime{Name: string(name), Features: []string{}}
		switch name {
		case gen.HypervisorQemuMicrovm:
			rt.Available = true
			rt.Features = append(rt.Features, c.RuntimeFeatures...)
		case gen.HypervisorQemu:
			rt.Reason = optString("QEMU's standard board (PCI, ACPI memory hotplug) is not provided; a create naming qemu runs on qemu-microvm")
		default:
			rt.Reason = optString("not supported by this server")
		}
		out.Runtimes = append(out.Runtimes, rt)
	}
	return out, nil
}

// features are the server-level feature IDs this server exposes.
func (s *server) features() []string {
	f := []string{"instances", "images", "logs", "wait", "events"}
	if s.opts.Guest != nil {
		f = append(f, "exec", "cp")
	}
	if s.opts.Ingresses != nil {
		f = append(f, "ingress")
	}
	if s.opts.Snapshots != nil {
		f = append(f, "snapshots")
	}
	return f
}

// --- instances ---

// instance converts a manager instance for the wire, with its phases.
func (s *server) instance(in *instances.Instance) gen.Instance {
	var v phases.View
	if s.opts.Phases != nil {
		v = s.opts.Phases.View(in.ID, in.State, phaseEntered(in))
	} else {
		cur := phases.Phase(in.State)
		v = phases.View{DurationsMs: map[string]int64{cur: 0}, Current: cur, Since: time.Now().UTC()}
	}
	return toAPIInstance(in, v)
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
	opts.Tags = derefTags(req.Params.Tags)
	list, err := s.opts.Instances.List(ctx, opts)
	if err != nil {
		return nil, err
	}
	out := make(gen.ListInstances200JSONResponse, 0, len(list))
	for _, in := range list {
		out = append(out, s.instance(in))
	}
	return out, nil
}

// platformRE is hypeman's os/arch[/variant] grammar.
var platformRE = regexp.MustCompile(`^[a-z0-9]+/[a-z0-9]+(/[a-z0-9.]+)?$`)

// checkPlatform accepts the platform this host runs (or none).
func (s *server) checkPlatform(ctx context.Context, field string, p *string) error {
	if p == nil {
		return nil
	}
	if !platformRE.MatchString(*p) {
		return newError(http.StatusBadRequest, CodeInvalidPlatform, "invalid %s %q: use os/arch[/variant], e.g. linux/amd64", field, *p)
	}
	host := "linux/" + runtime.GOARCH
	if s.opts.Capabilities != nil {
		if c := s.opts.Capabilities(ctx); c.Platform != "" {
			host = c.Platform
		}
	}
	if *p != host && !strings.HasPrefix(*p, host+"/") {
		return newError(http.StatusBadRequest, CodeUnsupportedPlatform, "%s %s cannot run on this host; it runs %s", field, *p, host)
	}
	return nil
}

// unsupported is the 400 for a field this server cannot honour.
func unsupported(field, reason string) error {
	return newError(http.StatusBadRequest, CodeUnsupported, "%s is not supported by this server: %s", field, reason)
}

// resolveExpiry reads ttl / expires_at (package expiry: ttl is relative to
// now, "0s" disables, the two are mutually exclusive).
func (s *server) resolveExpiry(ttl *string, expiresAt *time.Time) (expiry.Change, error) {
	return expiry.Resolve(ttl, expiresAt, s.now())
}

func (s *server) CreateInstance(ctx context.Context, req gen.CreateInstanceRequestObject) (gen.CreateInstanceResponseObject, error) {
	b := req.Body
	if b == nil {
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "request body is required")
	}
	switch {
	case b.Credentials != nil && len(*b.Credentials) > 0:
		return nil, unsupported("credentials", "egress credential mediation is not available; pass secrets in env")
	case b.Devices != nil && len(*b.Devices) > 0:
		return nil, unsupported("devices", "PCI passthrough needs a PCI bus, which the qemu-microvm runtime does not have")
	case b.Gpu != nil && deref(b.Gpu.Profile) != "":
		return nil, unsupported("gpu", "GPUs need PCI passthrough, which the qemu-microvm runtime does not have")
	case b.Network != nil && b.Network.Egress != nil && deref(b.Network.Egress.Enabled):
		return nil, unsupported("network.egress.enabled", "host-mediated egress is not available; guests use direct outbound networking")
	}
	if err := checkHypervisor("hypervisor", b.Hypervisor); err != nil {
		return nil, err
	}
	if err := s.checkPlatform(ctx, "platform", b.Platform); err != nil {
		return nil, err
	}
	autoStandby, err := autoStandbyFromAPI(b.AutoStandby)
	if err != nil {
		return nil, err
	}
	exp, err := s.resolveExpiry(b.Ttl, b.ExpiresAt)
	if err != nil {
		return nil, err
	}
	if err := tags.Validate("tags", derefTags(b.Tags)); err != nil {
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "%v", err)
	}
	p := instances.CreateParams{
		Name:           b.Name,
		Image:          b.Image,
		Size:           deref(b.Size),
		HotplugSize:    deref(b.HotplugSize),
		OverlaySize:    deref(b.OverlaySize),
		DiskIOBps:      deref(b.DiskIoBps),
		VCPUs:          deref(b.Vcpus),
		Env:            deref(b.Env),
		Entrypoint:     deref(b.Entrypoint),
		Cmd:            deref(b.Cmd),
		Tags:           derefTags(b.Tags),
		SkipGuestAgent: deref(b.SkipGuestAgent),
		Volumes:        volumeMountsFromAPI(deref(b.Volumes)),
		AutoStandby:    autoStandby,
		ExpiresAt:      exp.At,
		StopTimeout:    deref(b.StopTimeout),
		WorkingDir:     deref(b.WorkingDir),
		// Pulling an image the store lacks is an image write.
		NoPull: !principalAllows(ctx, auth.ImageWrite),
	}
	if n := b.Network; n != nil {
		p.NetworkEnabled = n.Enabled
		p.BandwidthDownload, p.BandwidthUpload = deref(n.BandwidthDownload), deref(n.BandwidthUpload)
	}
	if p.SnapshotPolicy, err = snapshotPolicyFromAPI(b.SnapshotPolicy); err != nil {
		return nil, err
	}
	if p.RestartPolicy, err = restartPolicyFromAPI(b.RestartPolicy); err != nil {
		return nil, err
	}
	if p.HealthCheck, err = healthCheckFromAPI(b.HealthCheck); err != nil {
		return nil, err
	}
	in, err := s.opts.Instances.Create(ctx, p)
	if err != nil {
		return nil, err
	}
	return gen.CreateInstance201JSONResponse(s.instance(in)), nil
}

func (s *server) GetInstance(ctx context.Context, req gen.GetInstanceRequestObject) (gen.GetInstanceResponseObject, error) {
	in, err := s.opts.Instances.Get(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	return gen.GetInstance200JSONResponse(s.instance(in)), nil
}

func (s *server) DeleteInstance(ctx context.Context, req gen.DeleteInstanceRequestObject) (gen.DeleteInstanceResponseObject, error) {
	if err := s.opts.Instances.Delete(ctx, req.Id); err != nil {
		return nil, err
	}
	return gen.DeleteInstance204Response{}, nil
}

// UpdateInstance is PATCH /instances/{id}: a field present replaces the
// setting, a field left out is unchanged.
func (s *server) UpdateInstance(ctx context.Context, req gen.UpdateInstanceRequestObject) (gen.UpdateInstanceResponseObject, error) {
	b := req.Body
	if b == nil {
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "request body is required")
	}
	if b.Env != nil {
		return nil, unsupported("env", "PATCH env only rotates egress credential bindings, and this server has none; env is set at create")
	}
	var p instances.UpdateParams
	var err error
	if p.AutoStandby, err = autoStandbyFromAPI(b.AutoStandby); err != nil {
		return nil, err
	}
	if p.Expiry, err = s.resolveExpiry(b.Ttl, b.ExpiresAt); err != nil {
		return nil, err
	}
	p.Now = s.now()
	if p.RestartPolicy, err = restartPolicyFromAPI(b.RestartPolicy); err != nil {
		return nil, err
	}
	if p.HealthCheck, err = healthCheckFromAPI(b.HealthCheck); err != nil {
		return nil, err
	}
	if p.RestartPolicy == nil && p.HealthCheck == nil && p.AutoStandby == nil && !p.Expiry.Set {
		// Only no-op fields: answer with the instance as it is.
		return s.getForUpdate(ctx, req.Id)
	}
	in, err := s.opts.Instances.Update(ctx, req.Id, p)
	if err != nil {
		return nil, err
	}
	return gen.UpdateInstance200JSONResponse(s.instance(in)), nil
}

func (s *server) getForUpdate(ctx context.Context, ref string) (gen.UpdateInstanceResponseObject, error) {
	in, err := s.opts.Instances.Get(ctx, ref)
	if err != nil {
		return nil, err
	}
	return gen.UpdateInstance200JSONResponse(s.instance(in)), nil
}

func (s *server) StartInstance(ctx context.Context, req gen.StartInstanceRequestObject) (gen.StartInstanceResponseObject, error) {
	var p instances.StartParams
	if b := req.Body; b != nil {
		p.Entrypoint, p.Cmd = b.Entrypoint, b.Cmd
	}
	in, err := s.opts.Instances.Start(ctx, req.Id, p)
	if err != nil {
		return nil, err
	}
	return gen.StartInstance200JSONResponse(s.instance(in)), nil
}

func (s *server) StopInstance(ctx context.Context, req gen.StopInstanceRequestObject) (gen.StopInstanceResponseObject, error) {
	var p instances.StopParams
	if b := req.Body; b != nil {
		p.Timeout = deref(b.Timeout)
	}
	in, err := s.opts.Instances.Stop(ctx, req.Id, p)
	if err != nil {
		return nil, err
	}
	return gen.StopInstance200JSONResponse(s.instance(in)), nil
}

func (s *server) GetInstanceStats(ctx context.Context, req gen.GetInstanceStatsRequestObject) (gen.GetInstanceStatsResponseObject, error) {
	st, err := s.opts.Instances.Stats(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	out := gen.GetInstanceStats200JSONResponse{
		InstanceId: st.InstanceID, InstanceName: st.InstanceName,
		CpuSeconds: st.CPUSeconds, MemoryRssBytes: st.RSSBytes, MemoryVmsBytes: st.VMSBytes,
		NetworkRxBytes: st.NetRxBytes, NetworkTxBytes: st.NetTxBytes,
		AllocatedVcpus: st.VCPUs, AllocatedMemoryBytes: st.AllocatedMemoryBytes,
		Running: &st.Running, OverlayAllocatedBytes: &st.OverlayAllocatedBytes, OverlaySizeBytes: &st.OverlaySizeBytes,
		UptimeSeconds: &st.UptimeSeconds,
	}
	if st.AllocatedMemoryBytes > 0 {
		r := float64(st.RSSBytes) / float64(st.AllocatedMemoryBytes)
		out.MemoryUtilizationRatio = &r
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

func (s *server) ListImages(ctx context.Context, req gen.ListImagesRequestObject) (gen.ListImagesResponseObject, error) {
	list, err := s.opts.Images.List(ctx)
	if err != nil {
		return nil, err
	}
	want := derefTags(req.Params.Tags)
	out := make(gen.ListImages200JSONResponse, 0, len(list))
	for i := range list {
		if tags.Match(list[i].Tags, want) {
			out = append(out, toAPIImage(&list[i]))
		}
	}
	return out, nil
}

func (s *server) CreateImage(ctx context.Context, req gen.CreateImageRequestObject) (gen.CreateImageResponseObject, error) {
	b := req.Body
	if b == nil {
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "request body is required")
	}
	if err := s.checkPlatform(ctx, "platform", b.Platform); err != nil {
		return nil, err
	}
	opts := images.EnsureOptions{Tags: derefTags(b.Tags)}
	if err := tags.Validate("tags", opts.Tags); err != nil {
		return nil, newError(http.StatusBadRequest, CodeInvalidRequest, "%v", err)
	}
	auth, err := registryAuth(b.Credentials)
	if err != nil {
		return nil, err
	}
	opts.Auth = auth
	img, err := s.opts.Images.Ensure(ctx, b.Name, opts)
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
		n, _ := s.opts.Images.CanonicalName(in.Image)
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

// --- devices: served honestly for a runtime without PCI ---

func (s *server) ListDevices(ctx context.Context, _ gen.ListDevicesRequestObject) (gen.ListDevicesResponseObject, error) {
	return gen.ListDevices200JSONResponse{}, nil
}

func (s *server) ListAvailableDevices(ctx context.Context, _ gen.ListAvailableDevicesRequestObject) (gen.ListAvailableDevicesResponseObject, error) {
	return gen.ListAvailableDevices200JSONResponse{}, nil
}

func (s *server) CreateDevice(ctx context.Context, _ gen.CreateDeviceRequestObject) (gen.CreateDeviceResponseObject, error) {
	return nil, newError(http.StatusNotImplemented, CodeNotImplemented,
		"device passthrough is not available: it needs a PCI bus in the guest and VFIO on the host, and this server's runtime (QEMU microvm) has no PCI bus")
}

func (s *server) GetDevice(ctx context.Context, req gen.GetDeviceRequestObject) (gen.GetDeviceResponseObject, error) {
	return nil, newError(http.StatusNotFound, CodeNotFound, "device %q not found (no device can be registered on this server)", req.Id)
}

func (s *server) DeleteDevice(ctx context.Context, req gen.DeleteDeviceRequestObject) (gen.DeleteDeviceResponseObject, error) {
	return nil, newError(http.StatusNotFound, CodeNotFound, "device %q not found (no device can be registered on this server)", req.Id)
}
