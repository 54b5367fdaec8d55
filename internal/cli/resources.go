package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"hypeman/internal/api/client"
	"hypeman/internal/units"
)

func (a *app) resourcesCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "resources",
		Aliases: []string{"resource"},
		Short:   "Show host capacity, limits and what instances hold",
		Long: `Show the server's capacity for cpu, memory, disk, disk I/O and network, the
effective limits after oversubscription, what is allocated and what is left,
the disk breakdown and what each instance holds. A create, start, restore or
fork that does not fit is refused (insufficient_resources).`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := a.api()
			if err != nil {
				return err
			}
			r, err := c.GetResourcesWithResponse(ctx)
			if done, err := a.listedAsJSON(ctx, r, err); done {
				return err
			}
			a.printResources(r.JSON200)
			return nil
		},
	}
	cmd.AddCommand(a.reclaimMemoryCommand())
	return cmd
}

func (a *app) printResources(res *client.Resources) {
	tw := a.table()
	fmt.Fprintln(tw, "RESOURCE\tCAPACITY\tEFFECTIVE\tALLOCATED\tAVAILABLE\tOVERSUB\tSOURCE")
	row := func(name string, s *client.ResourceStatus, f func(int64) string) {
		if s == nil {
			return
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.1fx\t%s\n", name, f(s.Capacity), f(s.EffectiveLimit), f(s.Allocated), f(s.Available),
			s.OversubRatio, orDash(deref(s.Source)))
	}
	row("cpu", &res.Cpu, func(n int64) string { return fmt.Sprint(n) })
	row("memory", &res.Memory, binaryBytes)
	row("disk", &res.Disk, binaryBytes)
	row("disk_io", res.DiskIo, func(n int64) string { return binaryBytes(n) + "/s" })
	row("network", &res.Network, bitRate)
	tw.Flush()
	if d := res.DiskBreakdown; d != nil {
		fmt.Fprintln(a.stdout, "\nDISK BREAKDOWN:")
		for _, p := range []struct {
			name string
			v    *int64
		}{{"Images", d.ImagesBytes}, {"Overlays", d.OverlaysBytes}, {"Volumes", d.VolumesBytes}, {"Snapshots", d.SnapshotsBytes}, {"OCI cache", d.OciCacheBytes}} {
			fmt.Fprintf(a.stdout, "  %-11s%s\n", p.name+":", binaryBytes(deref(p.v)))
		}
	}
	if len(res.Allocations) == 0 {
		return
	}
	fmt.Fprintln(a.stdout, "\nALLOCATIONS:")
	tw = a.table()
	fmt.Fprintln(tw, "INSTANCE\tCPU\tMEMORY\tDISK\tDISK I/O\tNET DOWN\tNET UP")
	limit := func(n int64, f func(int64) string) string {
		if n == 0 {
			return "-"
		}
		return f(n)
	}
	for _, al := range res.Allocations {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", orDash(deref(al.InstanceName)), deref(al.Cpu), binaryBytes(deref(al.MemoryBytes)),
			binaryBytes(deref(al.DiskBytes)), limit(deref(al.DiskIoBps), func(n int64) string { return binaryBytes(n) + "/s" }),
			limit(deref(al.NetworkDownloadBps), bitRate), limit(deref(al.NetworkUploadBps), bitRate))
	}
	tw.Flush()
}

// binaryBytes shows n in 1024-based units, the way hypeman sizes are
// written ("1GB" = 1024³ bytes).
func binaryBytes(n int64) string {
	v, i := float64(n), 0
	units := []string{"B", "KB", "MB", "GB", "TB", "PB"}
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.1f %s", v, units[i])
}

// bitRate shows a bytes/s rate as bits per second (network convention).
func bitRate(bytesPerSec int64) string {
	bits := float64(bytesPerSec) * 8
	for _, u := range []struct {
		s string
		m float64
	}{{"Gbps", 1e9}, {"Mbps", 1e6}, {"Kbps", 1e3}} {
		if bits >= u.m {
			return fmt.Sprintf("%.1f %s", bits/u.m, u.s)
		}
	}
	return fmt.Sprintf("%.0f bps", bits)
}

func (a *app) reclaimMemoryCommand() *cobra.Command {
	var reclaim, holdFor, reason string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "reclaim-memory --reclaim-bytes SIZE [--dry-run] [--hold-for DURATION] [--reason TEXT]",
		Short: "Take memory back from running guests through their balloons",
		Long: `Inflate the balloons of running guests created with --hotplug-size until
SIZE is given back to the host; a guest never goes below its base size. The
reclaim is held for --hold-for (default 5m), then the guests get their memory
back. --dry-run only shows the plan.

Examples:
  hypeman resources reclaim-memory --reclaim-bytes 512MB --dry-run
  hypeman resources reclaim-memory --reclaim-bytes 1GB --hold-for 10m --reason "pack host before launch"`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			usage := func(format string, args ...any) error {
				return &usageErr{cmd: cmd.CommandPath(), err: fmt.Errorf(format, args...)}
			}
			if reclaim == "" {
				return usage("--reclaim-bytes is required (e.g. 512MB, 2GB or a byte count)")
			}
			n, err := units.ParseSize(reclaim)
			if err != nil {
				return usage("invalid --reclaim-bytes: %v", err)
			}
			if n <= 0 {
				return usage("--reclaim-bytes must be greater than 0")
			}
			body := client.MemoryReclaimRequest{ReclaimBytes: n}
			if cmd.Flags().Changed("dry-run") {
				body.DryRun = &dryRun
			}
			if holdFor != "" {
				body.HoldFor = &holdFor
			}
			if reason != "" {
				body.Reason = &reason
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			r, err := c.ReclaimMemoryWithResponse(ctx, body)
			if done, err := a.listedAsJSON(ctx, r, err); done {
				return err
			}
			a.printReclaim(r.JSON200, dryRun)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&reclaim, "reclaim-bytes", "", "total guest memory to reclaim (`SIZE`: 512MB, 2GB or bytes)")
	f.BoolVar(&dryRun, "dry-run", false, "compute the plan without changing any balloon")
	f.StringVar(&holdFor, "hold-for", "", "how long to keep the reclaim (`DURATION`: 30s, 5m; default 5m)")
	f.StringVar(&reason, "reason", "", "operator reason recorded in the server log")
	return cmd
}

func (a *app) printReclaim(res *client.MemoryReclaimResponse, dryRun bool) {
	fmt.Fprintf(a.stdout, "Requested reclaim: %s\n", binaryBytes(res.RequestedReclaimBytes))
	fmt.Fprintf(a.stdout, "Planned reclaim:   %s\n", binaryBytes(res.PlannedReclaimBytes))
	fmt.Fprintf(a.stdout, "Applied reclaim:   %s\n", binaryBytes(res.AppliedReclaimBytes))
	fmt.Fprintf(a.stdout, "Host available:    %s (%s)\n", binaryBytes(res.HostAvailableBytes), res.HostPressureState)
	if res.HoldUntil != nil && !dryRun {
		fmt.Fprintf(a.stdout, "Held until:        %s\n", res.HoldUntil.In(a.loc).Format("2006-01-02 15:04:05 MST"))
	}
	if len(res.Actions) == 0 {
		fmt.Fprintln(a.stdout, "No running guest has hotplug memory to give back.")
		return
	}
	fmt.Fprintln(a.stdout)
	tw := a.table()
	fmt.Fprintln(tw, "INSTANCE\tASSIGNED\tFLOOR\tBEFORE\tTARGET\tGAVE BACK\tSTATUS")
	for _, ac := range res.Actions {
		status := ac.Status
		if e := deref(ac.Error); e != "" {
			status += ": " + strings.TrimSpace(e)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", ac.InstanceName, binaryBytes(ac.AssignedMemoryBytes), binaryBytes(ac.ProtectedFloorBytes),
			binaryBytes(ac.PreviousTargetGuestMemoryBytes), binaryBytes(ac.PlannedTargetGuestMemoryBytes), binaryBytes(ac.AppliedReclaimBytes), status)
	}
	tw.Flush()
}
