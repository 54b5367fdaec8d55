package cli

// Volumes in instances: run --volume and "volume attach|detach". The
// "volume" command group itself (create, list, get, rm) is volumes.go,
// which adds these through volumeAttachCommands.

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/spf13/cobra"

	"hypeman/internal/api/client"
)

// volumeSpecUsage is the --volume format (upstream's).
const volumeSpecUsage = "VOLUME:/mount/path[:ro[:overlay=SIZE]]"

// parseVolumeSpec parses one --volume value: VOLUME:/path, then options
// separated by colons: "ro" (read-only) and "overlay=SIZE" (a per-instance
// copy-on-write layer of SIZE; the server requires ro with it).
func parseVolumeSpec(spec string) (client.VolumeMount, error) {
	vol, rest, ok := strings.Cut(spec, ":")
	if !ok {
		return client.VolumeMount{}, fmt.Errorf("invalid --volume %q: want %s", spec, volumeSpecUsage)
	}
	if vol == "" {
		return client.VolumeMount{}, fmt.Errorf("invalid --volume %q: the volume (ID or name) before the first colon is empty", spec)
	}
	parts := strings.Split(rest, ":")
	if parts[0] == "" {
		return client.VolumeMount{}, fmt.Errorf("invalid --volume %q: the mount path is empty; want %s", spec, volumeSpecUsage)
	}
	m := client.VolumeMount{VolumeId: vol, MountPath: parts[0]}
	for _, opt := range parts[1:] {
		switch {
		case opt == "ro":
			m.Readonly = ptr(true)
		case strings.HasPrefix(opt, "overlay="):
			size := strings.TrimPrefix(opt, "overlay=")
			if size == "" {
				return client.VolumeMount{}, fmt.Errorf("invalid --volume %q: overlay= needs a SIZE, e.g. overlay=1GB", spec)
			}
			m.Overlay, m.OverlaySize = ptr(true), ptr(size)
		default:
			return client.VolumeMount{}, fmt.Errorf("invalid --volume %q: unknown option %q (want ro or overlay=SIZE)", spec, opt)
		}
	}
	return m, nil
}

// volumeMounts parses every --volume value (nil: none given).
func volumeMounts(specs []string) (*[]client.VolumeMount, error) {
	if len(specs) == 0 {
		return nil, nil
	}
	out := make([]client.VolumeMount, 0, len(specs))
	for _, s := range specs {
		m, err := parseVolumeSpec(s)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return &out, nil
}

// volumeAttachCommands are "volume attach" and "volume detach" (upstream's
// flags: --instance, --mount-path, --readonly).
func (a *app) volumeAttachCommands() []*cobra.Command {
	var instance, mountPath string
	var readonly bool
	attach := &cobra.Command{
		Use:   "attach VOLUME --instance INSTANCE --mount-path PATH [--readonly]",
		Short: "Attach a volume to a stopped instance",
		Long: `Attach VOLUME (ID or name) to a Stopped INSTANCE: the guest mounts it at
PATH (created if missing) from the next start on. A writable volume can be
attached to one instance at a time, a read-only one to many. Prints the
volume as given (with --format json the instance).`,
		Example: `  hypeman stop web && hypeman volume attach data --instance web --mount-path /data && hypeman start web`,
		Args:    exactArgs(1, "exactly one volume"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if instance == "" || mountPath == "" {
				return &usageErr{cmd: cmd.CommandPath(), err: fmt.Errorf("--instance and --mount-path are required")}
			}
			body := client.AttachVolumeRequest{MountPath: mountPath}
			if cmd.Flags().Changed("readonly") {
				body.Readonly = &readonly
			}
			return a.volumeCall(cmd, args[0], func(c *client.ClientWithResponses) (response, error) {
				return c.AttachVolumeWithResponse(cmd.Context(), instance, args[0], body)
			})
		},
	}
	attach.Flags().StringVar(&instance, "instance", "", "instance `ID` or name (required)")
	attach.Flags().StringVar(&mountPath, "mount-path", "", "`PATH` where the guest mounts the volume (required)")
	attach.Flags().BoolVar(&readonly, "readonly", false, "mount read-only")

	var detachFrom string
	detach := &cobra.Command{
		Use:   "detach VOLUME --instance INSTANCE",
		Short: "Detach a volume from a stopped instance",
		Long: `Detach VOLUME (ID or name) from a Stopped INSTANCE: it is no longer mounted
from the next start on (an overlay mount's own layer is deleted). Prints
the volume as given (with --format json the instance).`,
		Args: exactArgs(1, "exactly one volume"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if detachFrom == "" {
				return &usageErr{cmd: cmd.CommandPath(), err: fmt.Errorf("--instance is required")}
			}
			return a.volumeCall(cmd, args[0], func(c *client.ClientWithResponses) (response, error) {
				return c.DetachVolumeWithResponse(cmd.Context(), detachFrom, args[0])
			})
		},
	}
	detach.Flags().StringVar(&detachFrom, "instance", "", "instance `ID` or name (required)")
	return []*cobra.Command{attach, detach}
}

// volumeCall runs an attach or detach and prints its result.
func (a *app) volumeCall(cmd *cobra.Command, volume string, call func(*client.ClientWithResponses) (response, error)) error {
	c, err := a.api()
	if err != nil {
		return err
	}
	r, err := call(c)
	if err := a.check(cmd.Context(), r, err, http.StatusOK); err != nil {
		return err
	}
	a.printCreated(volume, r.GetBody())
	return nil
}
