package cli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/spf13/cobra"

	"hypeman/internal/api/client"
)

// --- standby, restore, pause, resume, fork ---

func (a *app) standbyCommand() *cobra.Command {
	cf := compressionFlags{prefix: "compression-", fallback: "the instance's policy",
		delayUsage: "save uncompressed and compress after `DURATION`, e.g. 5m (default: the instance's policy, else 0: while saving)"}
	var body client.StandbyInstanceRequest
	cmd := a.lifecycleCommand("standby", "Put running instances on standby",
		`Save each instance's memory and device state to disk and end its VM
(Running → Paused → Standby): it costs no CPU or memory until "hypeman
restore" continues it where it was. Prints each name as given (with
--format json the instance). The --compression flags override the
instance's snapshot policy for this standby.`,
		func(ctx context.Context, c *client.ClientWithResponses, ref string) (response, error) {
			return c.StandbyInstanceWithResponse(ctx, ref, body)
		})
	cmd.Example = `  hypeman standby web
  hypeman standby --compression-algorithm lz4 --compression-delay 1m web`
	cmd.PreRunE = func(cmd *cobra.Command, _ []string) error {
		comp, delay, err := cf.build(cmd.Flags())
		if err != nil {
			return &usageErr{cmd: cmd.CommandPath(), err: err}
		}
		body = client.StandbyInstanceRequest{Compression: comp, CompressionDelay: delay}
		return nil
	}
	cf.register(cmd.Flags())
	return cmd
}

func (a *app) restoreCommand() *cobra.Command {
	return a.lifecycleCommand("restore", "Restore instances from standby",
		`Continue each Standby instance where it was put on standby: memory,
disk and logs intact. Prints each name as given (with --format json the
instance).`,
		byRef((*client.ClientWithResponses).RestoreInstanceWithResponse))
}

func (a *app) pauseCommand() *cobra.Command {
	return a.lifecycleCommand("pause", "Pause running instances",
		`Freeze each Running instance's virtual CPUs (its memory stays
allocated); "hypeman resume" continues it.`,
		byRef((*client.ClientWithResponses).PauseInstanceWithResponse))
}

func (a *app) resumeCommand() *cobra.Command {
	return a.lifecycleCommand("resume", "Resume paused instances",
		`Continue each Paused instance.`,
		byRef((*client.ClientWithResponses).ResumeInstanceWithResponse))
}

// forkTargetFlag validates --target-state (case-insensitive).
func forkTargetFlag(cmd *cobra.Command, s string) (*client.ForkTargetState, error) {
	if s == "" {
		return nil, nil
	}
	for _, t := range []client.ForkTargetState{client.ForkToRunning, client.ForkToStandby, client.ForkToStopped} {
		if strings.EqualFold(s, string(t)) {
			return &t, nil
		}
	}
	return nil, &usageErr{cmd: cmd.CommandPath(), err: fmt.Errorf("invalid --target-state %q: use Running, Standby or Stopped", s)}
}

// printCreated prints a created object's ID, or its JSON.
func (a *app) printCreated(id string, body []byte) {
	if a.jsonOutput() {
		a.printRaw(body)
	} else {
		fmt.Fprintln(a.stdout, id)
	}
}

func (a *app) forkCommand() *cobra.Command {
	var (
		fromRunning bool
		target      string
	)
	cmd := &cobra.Command{
		Use:   "fork [--from-running] [--target-state STATE] SOURCE NAME",
		Short: "Clone an instance",
		Long: `Fork creates instance NAME from SOURCE: a new ID, its own copy of the
writable disk and its own logs. From a Stopped source the fork is a disk
clone; from a Standby source it continues the source's memory state. A
Running source needs --from-running: it is put on standby, cloned, and both
are restored. Prints the new instance's ID (with --format json the
instance).`,
		Example: `  hypeman fork web web-2
  hypeman fork --from-running --target-state Standby web warm-1`,
		Args: exactArgs(2, "a source instance and a name for the fork"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if err := checkName(args[1]); err != nil {
				return &usageErr{cmd: cmd.CommandPath(), err: err}
			}
			ts, err := forkTargetFlag(cmd, target)
			if err != nil {
				return err
			}
			req := client.ForkInstanceRequest{Name: args[1], TargetState: ts}
			if fromRunning {
				req.FromRunning = &fromRunning
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			r, err := c.ForkInstanceWithResponse(ctx, args[0], req)
			if err := a.check(ctx, r, err, http.StatusCreated); err != nil {
				return err
			}
			a.printCreated(r.JSON201.Id, r.Body)
			return nil
		},
	}
	cmd.Flags().BoolVar(&fromRunning, "from-running", false, "allow forking a Running instance (standby, clone, restore both)")
	cmd.Flags().StringVar(&target, "target-state", "", "`STATE` of the fork when the command returns: Running, Standby or Stopped (default Running, Stopped for a Stopped source)")
	return cmd
}

// --- snapshot ---

func (a *app) snapshotCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "snapshot",
		Aliases: []string{"snapshots"},
		Short:   "Manage snapshots of instances",
		Long: `Snapshots are point-in-time copies of an instance that outlive it. A
Standby snapshot holds memory and device state with the disks (restoring or
forking it continues the program); a Stopped snapshot holds the writable
disk only.`,
		RunE: groupRun,
	}
	cmd.AddCommand(a.snapshotCreateCommand(), a.snapshotListCommand(), a.snapshotGetCommand(),
		a.snapshotRestoreCommand(), a.snapshotForkCommand(), a.snapshotRmCommand(), a.snapshotScheduleCommand())
	return cmd
}

func (a *app) snapshotCreateCommand() *cobra.Command {
	var (
		kind, name string
		tags       []string
		cf         = compressionFlags{prefix: "compression-", fallback: "the instance's policy"}
	)
	cmd := &cobra.Command{
		Use:   "create [--kind Standby|Stopped] [--name NAME] [--tag KEY=VALUE] [--compression-algorithm zstd|lz4] INSTANCE",
		Short: "Take a snapshot of an instance",
		Long: `Take a snapshot of INSTANCE and print its ID (with --format json the
snapshot). The default kind is Standby for a Running, Paused or Standby
instance (a running one is paused for the save and continues), Stopped for
a Stopped one. The --compression flags override the instance's snapshot
policy for the saved memory of a Standby snapshot.`,
		Example: `  hypeman snapshot create web
  hypeman snapshot create --name before-upgrade --tag reason=upgrade web
  hypeman snapshot create --compression-algorithm zstd --compression-level 6 web`,
		Args: exactArgs(1, "exactly one instance"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			usage := func(err error) error { return &usageErr{cmd: cmd.CommandPath(), err: err} }
			var req client.CreateSnapshotRequest
			comp, _, err := cf.build(cmd.Flags())
			if err != nil {
				return usage(err)
			}
			req.Compression = comp
			switch {
			case kind == "":
				// Like the server used to: Standby for a live or standby
				// instance, Stopped for a stopped one.
				c, err := a.api()
				if err != nil {
					return err
				}
				r, err := c.GetInstanceWithResponse(ctx, args[0])
				if err := a.check(ctx, r, err, http.StatusOK); err != nil {
					return err
				}
				req.Kind = client.SnapshotKindStandby
				if r.JSON200.State == client.Stopped {
					req.Kind = client.SnapshotKindStopped
					if comp != nil {
						return fmt.Errorf("instance %s is Stopped, so its snapshot holds no memory to compress: leave out --%s", args[0], cf.given(cmd.Flags()))
					}
				}
			case strings.EqualFold(kind, string(client.SnapshotKindStandby)):
				req.Kind = client.SnapshotKindStandby
			case strings.EqualFold(kind, string(client.SnapshotKindStopped)):
				req.Kind = client.SnapshotKindStopped
				if comp != nil {
					return usage(fmt.Errorf("--%s has no effect with --kind Stopped (a Stopped snapshot holds no memory)", cf.given(cmd.Flags())))
				}
			default:
				return usage(fmt.Errorf("invalid --kind %q: use Standby or Stopped", kind))
			}
			if name != "" {
				if err := checkNameOf("snapshot", name); err != nil {
					return usage(err)
				}
				req.Name = &name
			}
			t, err := parseKV(tags, "--tag", nil)
			if err != nil {
				return usage(err)
			}
			if t != nil {
				ct := client.Tags(t)
				req.Tags = &ct
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			r, err := c.CreateInstanceSnapshotWithResponse(ctx, args[0], req)
			if err := a.check(ctx, r, err, http.StatusCreated); err != nil {
				return err
			}
			a.printCreated(r.JSON201.Id, r.Body)
			return nil
		},
	}
	cmd.Flags().StringVar(&kind, "kind", "", "`KIND` of snapshot: Standby (memory + disks) or Stopped (disk only)")
	cmd.Flags().StringVar(&name, "name", "", "snapshot `NAME` (default: generated from the instance name and time)")
	cmd.Flags().StringArrayVar(&tags, "tag", nil, "attach a tag `KEY=VALUE`; repeatable")
	cf.register(cmd.Flags())
	return cmd
}

func (a *app) snapshotListCommand() *cobra.Command {
	var instance, kind, name string
	var tagArgs []string
	cmd := &cobra.Command{
		Use:     "list [--instance INSTANCE] [--kind KIND] [--name NAME] [--tag KEY=VALUE]...",
		Aliases: []string{"ls"},
		Short:   "List snapshots",
		Long: `List snapshots, newest first (with --format json the API's list, oldest
first). The filters combine.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			var params client.ListSnapshotsParams
			if instance != "" {
				params.Instance = &instance
			}
			if name != "" {
				params.Name = &name
			}
			switch {
			case kind == "":
			case strings.EqualFold(kind, string(client.SnapshotKindStandby)):
				params.Kind = ptr(client.SnapshotKindStandby)
			case strings.EqualFold(kind, string(client.SnapshotKindStopped)):
				params.Kind = ptr(client.SnapshotKindStopped)
			default:
				return &usageErr{cmd: cmd.CommandPath(), err: fmt.Errorf("invalid --kind %q: use Standby or Stopped", kind)}
			}
			tags, err := parseKV(tagArgs, "--tag", nil)
			if err != nil {
				return &usageErr{cmd: cmd.CommandPath(), err: err}
			}
			if tags != nil {
				t := client.TagsFilter(tags)
				params.Tags = &t
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			r, err := c.ListSnapshotsWithResponse(ctx, &params)
			if done, err := a.listedAsJSON(ctx, r, err); done {
				return err
			}
			list := *r.JSON200
			tw := a.table()
			fmt.Fprintln(tw, "ID\tNAME\tKIND\tSOURCE\tSIZE\tCREATED")
			now := a.now()
			for i := len(list) - 1; i >= 0; i-- {
				s := list[i]
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", shortID(s.Id), orDash(deref(s.Name)), s.Kind, orDash(s.SourceInstanceName),
					humanBytes(s.SizeBytes), age(now, s.CreatedAt))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&instance, "instance", "", "only snapshots of `INSTANCE` (also after it was deleted)")
	cmd.Flags().StringVar(&kind, "kind", "", "only snapshots of `KIND` Standby or Stopped")
	cmd.Flags().StringVar(&name, "name", "", "only the snapshot named `NAME`")
	cmd.Flags().StringArrayVar(&tagArgs, "tag", nil, "only snapshots tagged `KEY=VALUE`; repeatable (all must match)")
	return cmd
}

func (a *app) snapshotGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "get SNAPSHOT",
		Aliases: []string{"inspect"},
		Short:   "Show a snapshot as JSON",
		Args:    exactArgs(1, "exactly one snapshot"),
		RunE:    a.showRun(byRef((*client.ClientWithResponses).GetSnapshotWithResponse)),
	}
}

func (a *app) snapshotRestoreCommand() *cobra.Command {
	var target string
	cmd := &cobra.Command{
		Use:   "restore [--target-state STATE] INSTANCE SNAPSHOT",
		Short: "Roll an instance back to one of its snapshots",
		Long: `Replace INSTANCE's state with SNAPSHOT (one of its own). The instance
must be Stopped or Standby. By default a Standby snapshot brings it to
Running where the snapshot was taken and a Stopped one leaves it Stopped on
the snapshot's disk; --target-state chooses (a Stopped snapshot cannot end
Standby). Prints the instance as given (with --format json the instance).`,
		Args: exactArgs(2, "an instance and a snapshot"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			ts, err := forkTargetFlag(cmd, target)
			if err != nil {
				return err
			}
			var req client.RestoreSnapshotRequest
			if ts != nil {
				st := client.SnapshotTargetState(*ts)
				req.TargetState = &st
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			r, err := c.RestoreInstanceSnapshotWithResponse(ctx, args[0], args[1], req)
			if err := a.check(ctx, r, err, http.StatusOK); err != nil {
				return err
			}
			a.printCreated(args[0], r.Body)
			return nil
		},
	}
	cmd.Flags().StringVar(&target, "target-state", "", "`STATE` after the restore: Running, Standby or Stopped (default by the snapshot's kind)")
	return cmd
}

func (a *app) snapshotForkCommand() *cobra.Command {
	var target string
	cmd := &cobra.Command{
		Use:   "fork [--target-state STATE] SNAPSHOT NAME",
		Short: "Create an instance from a snapshot",
		Long: `Create instance NAME from SNAPSHOT and print its ID (with --format json
the instance). From a Standby snapshot it continues the snapshot's memory
state; from a Stopped one it boots on the snapshot's disk.`,
		Args: exactArgs(2, "a snapshot and a name for the new instance"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if err := checkName(args[1]); err != nil {
				return &usageErr{cmd: cmd.CommandPath(), err: err}
			}
			ts, err := forkTargetFlag(cmd, target)
			if err != nil {
				return err
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			var sts *client.SnapshotTargetState
			if ts != nil {
				st := client.SnapshotTargetState(*ts)
				sts = &st
			}
			r, err := c.ForkSnapshotWithResponse(ctx, args[0], client.ForkSnapshotRequest{Name: args[1], TargetState: sts})
			if err := a.check(ctx, r, err, http.StatusCreated); err != nil {
				return err
			}
			a.printCreated(r.JSON201.Id, r.Body)
			return nil
		},
	}
	cmd.Flags().StringVar(&target, "target-state", "", "`STATE` of the new instance: Running (default), Standby or Stopped")
	return cmd
}

func (a *app) snapshotRmCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "rm SNAPSHOT...",
		Aliases: []string{"delete"},
		Short:   "Delete snapshots",
		Args:    minArgs(1, "at least one snapshot"),
		RunE:    a.eachRun(byRef((*client.ClientWithResponses).DeleteSnapshotWithResponse), http.StatusNoContent),
	}
}

// checkNameOf is checkName for other named things (same rule).
func checkNameOf(kind, s string) error {
	if err := checkName(s); err != nil {
		return errors.New(strings.Replace(err.Error(), "instance name", kind+" name", 1))
	}
	return nil
}

// groupRun is the RunE of a command group: help without arguments, a usage
// error for an unknown subcommand (cobra would print help and succeed).
func groupRun(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return &usageErr{cmd: cmd.CommandPath(), err: fmt.Errorf("unknown command %q for %q", args[0], cmd.CommandPath())}
	}
	return cmd.Help()
}
