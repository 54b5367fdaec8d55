package cli

import (
	"fmt"
	"net/http"

	"github.com/spf13/cobra"

	"hypeman/internal/api/client"
)

// --- template (kernel/hypeman PR #229's promote/demote) ---

func (a *app) templateCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "template",
		Aliases: []string{"templates"},
		Short:   "Promote Standby instances to templates (fork sources) and back",
		Long: `A template is a Standby instance kept as a fork source: "hypeman fork
TEMPLATE NAME" clones it as often as wanted while it stays a template. While
forks of a template exist it cannot be restored, started, deleted or demoted
(the server names the forks); delete them first. Restoring a template without
forks demotes it and restores it.`,
	}
	promote := a.lifecycleCommand("promote", "Make Standby instances templates",
		`Promote each Standby instance to Template. Prints each name as given (with
--format json the instance).`,
		byRef((*client.ClientWithResponses).PromoteTemplateWithResponse))
	promote.Example = `  hypeman standby base && hypeman template promote base
  hypeman fork --target-state Running base worker-1`
	demote := a.lifecycleCommand("demote", "Make templates without forks Standby again",
		`Demote each template back to Standby. Refused while forks of it exist.
Prints each name as given (with --format json the instance).`,
		byRef((*client.ClientWithResponses).DemoteTemplateWithResponse))
	cmd.AddCommand(promote, demote, a.templateListCommand())
	return cmd
}

func (a *app) templateListCommand() *cobra.Command {
	var quiet bool
	cmd := &cobra.Command{
		Use:     "ls [-q]",
		Aliases: []string{"list"},
		Short:   "List templates with their fork counts",
		Args:    exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := a.api()
			if err != nil {
				return err
			}
			st := client.Template
			r, err := c.ListInstancesWithResponse(ctx, &client.ListInstancesParams{State: &st})
			if err := a.check(ctx, r, err, http.StatusOK); err != nil {
				return err
			}
			if a.jsonOutput() {
				a.printRaw(r.Body)
				return nil
			}
			list := *r.JSON200
			if quiet {
				for _, in := range list {
					fmt.Fprintln(a.stdout, in.Id)
				}
				return nil
			}
			tw := a.table()
			fmt.Fprintln(tw, "ID\tNAME\tIMAGE\tFORKS\tCREATED")
			now := a.now()
			for _, in := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", shortID(in.Id), in.Name, in.Image, deref(in.ForkCount), age(now, in.CreatedAt))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print full IDs only")
	return cmd
}

// stateColumn is the STATE of ps: a template shows its fork count.
func stateColumn(in client.Instance) string {
	if in.State == client.Template {
		return fmt.Sprintf("Template (%d forks)", deref(in.ForkCount))
	}
	return string(in.State)
}
