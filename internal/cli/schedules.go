package cli

// "snapshot schedule get|set|delete" (upstream's command and flags):
// the server takes the scheduled snapshots; these commands manage the
// schedule.

import (
	"net/http"

	"github.com/spf13/cobra"

	"hypeman/internal/api/client"
)

func (a *app) snapshotScheduleCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "schedule",
		Short: "Manage an instance's scheduled snapshots",
		Long: `A schedule makes the server take a Standby snapshot of a Running
instance every --interval (at least 1m), named <name-prefix>-<UTC time>, and
delete the ones beyond its retention (--max-count newest, --max-age).
Deleting the instance deletes its schedule; the snapshots stay.`,
		RunE: groupRun,
	}
	cmd.AddCommand(a.scheduleSetCommand(), a.scheduleGetCommand(), a.scheduleDeleteCommand())
	return cmd
}

func (a *app) scheduleSetCommand() *cobra.Command {
	var (
		interval, maxAge, prefix string
		maxCount                 int
		metadata                 []string
	)
	cmd := &cobra.Command{
		Use:   "set --interval DURATION [--max-count N] [--max-age DURATION] [--name-prefix PREFIX] [--metadata KEY=VALUE] INSTANCE",
		Short: "Create or replace an instance's snapshot schedule",
		Example: `  hypeman snapshot schedule set --interval 24h --max-count 7 web
  hypeman snapshot schedule set --interval 1h --max-age 48h --name-prefix hourly --metadata team=web web`,
		Args: exactArgs(1, "exactly one instance"),
		RunE: func(cmd *cobra.Command, args []string) error {
			usage := func(err error) error { return &usageErr{cmd: cmd.CommandPath(), err: err} }
			req := client.SetSnapshotScheduleRequest{Interval: interval}
			if cmd.Flags().Changed("max-count") {
				req.Retention.MaxCount = &maxCount
			}
			if maxAge != "" {
				req.Retention.MaxAge = &maxAge
			}
			if prefix != "" {
				req.NamePrefix = &prefix
			}
			md, err := parseKV(metadata, "--metadata", nil)
			if err != nil {
				return usage(err)
			}
			if md != nil {
				t := client.Tags(md)
				req.Metadata = &t
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			r, err := c.SetInstanceSnapshotScheduleWithResponse(cmd.Context(), args[0], req)
			if err := a.check(cmd.Context(), r, err, http.StatusOK); err != nil {
				return err
			}
			return a.printPretty(r.Body)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&interval, "interval", "", "take a snapshot every `DURATION` (Go duration, at least 1m)")
	_ = cmd.MarkFlagRequired("interval")
	fl.IntVar(&maxCount, "max-count", 0, "keep the newest `N` scheduled snapshots (0: no count limit)")
	fl.StringVar(&maxAge, "max-age", "", "delete scheduled snapshots older than `DURATION`, e.g. 168h")
	fl.StringVar(&prefix, "name-prefix", "", "`PREFIX` of the snapshot names (default: the instance name)")
	fl.StringArrayVar(&metadata, "metadata", nil, "tag the scheduled snapshots `KEY=VALUE`; repeatable")
	return cmd
}

func (a *app) scheduleGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "get INSTANCE",
		Short: "Show an instance's snapshot schedule as JSON (last run, last error, next run)",
		Args:  exactArgs(1, "exactly one instance"),
		RunE:  a.showRun(byRef((*client.ClientWithResponses).GetInstanceSnapshotScheduleWithResponse)),
	}
}

func (a *app) scheduleDeleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "delete INSTANCE...",
		Aliases: []string{"rm"},
		Short:   "Delete snapshot schedules (the snapshots they took stay)",
		Args:    minArgs(1, "at least one instance"),
		RunE:    a.eachRun(byRef((*client.ClientWithResponses).DeleteInstanceSnapshotScheduleWithResponse), http.StatusNoContent),
	}
}
