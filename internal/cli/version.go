package cli

import (
	"encoding/json"
	"fmt"
	"net/http"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	"hypeman/internal/api/client"
)

// clientVersion is the module version and VCS revision of this binary.
func clientVersion() (version, revision string) {
	version = "dev"
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return version, ""
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		version = v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" {
			revision = s.Value
			if len(revision) > 12 {
				revision = revision[:12]
			}
		}
	}
	return version, revision
}

func (a *app) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Show the client and server versions",
		Long: `Print this client's version and the server's version, hypervisor and
accelerator (from GET /capabilities). The client part is printed even when
the server cannot be reached (the command then exits 1).`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			v, rev := clientVersion()
			c, err := a.api()
			var (
				capsBody []byte
				caps     *client.Capabilities
			)
			if err == nil {
				r, rerr := c.GetCapabilitiesWithResponse(ctx)
				if err = a.check(ctx, r, rerr, http.StatusOK); err == nil {
					capsBody, caps = r.Body, r.JSON200
				}
			}
			if a.jsonOutput() {
				out := map[string]any{"client": map[string]string{"version": v, "revision": rev, "go": runtime.Version()}}
				if capsBody != nil {
					out["server"] = json.RawMessage(capsBody)
				}
				b, merr := json.Marshal(out)
				if merr != nil {
					return merr
				}
				a.printRaw(b)
				return err
			}
			fmt.Fprintf(a.stdout, "Client: hypeman %s", v)
			if rev != "" {
				fmt.Fprintf(a.stdout, " (%s)", rev)
			}
			fmt.Fprintf(a.stdout, " %s\n", runtime.Version())
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Server: hypemand %s (API %s) at %s\n", caps.Server.Version, caps.Server.ApiVersion, a.describeServer())
			fmt.Fprintf(a.stdout, "  hypervisor %s, accelerator %s (%s), networking %s\n",
				orDash(caps.DefaultRuntime.Name), orDash(caps.Accelerator), orDash(caps.AcceleratorReason), orDash(caps.Networking.Mode))
			return nil
		},
	}
}
