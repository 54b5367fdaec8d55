package cli

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"hypeman/internal/api/client"
)

func (a *app) volumeCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "volume",
		Aliases: []string{"volumes"},
		Short:   "Manage volumes (disks that outlive instances)",
		Long: `A volume is a named ext4 disk that outlives the instances that mount it.
Create it empty or seeded from a .tar.gz; it is sparse, so size is what it
may grow to.`,
		RunE: groupRun,
	}
	cmd.AddCommand(a.volumeCreateCommand(), a.volumeListCommand(), a.volumeGetCommand(), a.volumeRmCommand())
	cmd.AddCommand(a.volumeAttachCommands()...)
	return cmd
}

func (a *app) volumeCreateCommand() *cobra.Command {
	var (
		name, id, archive string
		size              int
		tagArgs           []string
	)
	cmd := &cobra.Command{
		Use:   "create --name NAME --size GB [--id ID] [--tag KEY=VALUE]... [--from-archive FILE.tar.gz]",
		Short: "Create a volume",
		Long: `Create a volume of --size GiB and print its ID (with --format json the
volume). With --from-archive the volume holds the archive's files (modes,
owners and mtimes kept); the archive is streamed, and --size also caps what
it may unpack to.`,
		Example: `  hypeman volume create --name data --size 10
  hypeman volume create --name site --size 1 --from-archive site.tar.gz --tag app=web`,
		Args: exactArgs(0, "no arguments (give --name and --size)"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			usage := func(err error) error { return &usageErr{cmd: cmd.CommandPath(), err: err} }
			if err := checkNameOf("volume", name); err != nil {
				return usage(fmt.Errorf("--name: %w", err))
			}
			if size < 1 {
				return usage(fmt.Errorf("--size must be a whole number of GiB, at least 1"))
			}
			tags, err := parseKV(tagArgs, "--tag", nil)
			if err != nil {
				return usage(err)
			}
			var optID *string
			if id != "" {
				optID = &id
			}
			var optTags *client.Tags
			if tags != nil {
				t := client.Tags(tags)
				optTags = &t
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			if archive == "" {
				r, err := c.CreateVolumeWithResponse(ctx, client.CreateVolumeRequest{Name: name, SizeGb: size, Id: optID, Tags: optTags})
				if err := a.check(ctx, r, err, http.StatusCreated); err != nil {
					return err
				}
				a.printCreated(r.JSON201.Id, r.Body)
				return nil
			}
			f, err := os.Open(archive)
			if err != nil {
				return usage(fmt.Errorf("--from-archive: %w", err))
			}
			defer f.Close()
			params := &client.CreateVolumeFromArchiveParams{Name: name, SizeGb: size, Id: optID, Tags: optTags}
			r, err := c.CreateVolumeFromArchiveWithBodyWithResponse(ctx, params, "application/gzip", bufio.NewReaderSize(f, 256<<10))
			if err := a.check(ctx, r, err, http.StatusCreated); err != nil {
				return err
			}
			a.printCreated(r.JSON201.Id, r.Body)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "volume `NAME` (required)")
	cmd.Flags().IntVar(&size, "size", 0, "size in `GB` (GiB; required)")
	cmd.Flags().StringVar(&id, "id", "", "custom `ID` (generated when omitted)")
	cmd.Flags().StringArrayVar(&tagArgs, "tag", nil, "attach a tag `KEY=VALUE`; repeatable")
	cmd.Flags().StringVar(&archive, "from-archive", "", "seed the volume from `FILE.tar.gz`")
	return cmd
}

func (a *app) volumeListCommand() *cobra.Command {
	var quiet bool
	var tagArgs []string
	cmd := &cobra.Command{
		Use:     "list [-q] [--tag KEY=VALUE]...",
		Aliases: []string{"ls"},
		Short:   "List volumes",
		Args:    exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			tags, err := parseKV(tagArgs, "--tag", nil)
			if err != nil {
				return &usageErr{cmd: cmd.CommandPath(), err: err}
			}
			var params client.ListVolumesParams
			if tags != nil {
				t := client.TagsFilter(tags)
				params.Tags = &t
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			r, err := c.ListVolumesWithResponse(ctx, &params)
			if done, err := a.listedAsJSON(ctx, r, err); done {
				return err
			}
			if quiet {
				for _, v := range *r.JSON200 {
					fmt.Fprintln(a.stdout, v.Id)
				}
				return nil
			}
			tw := a.table()
			fmt.Fprintln(tw, "ID\tNAME\tSIZE\tATTACHMENTS\tCREATED")
			now := a.now()
			for _, v := range *r.JSON200 {
				att := "-"
				if v.Attachments != nil && len(*v.Attachments) > 0 {
					att = strconv.Itoa(len(*v.Attachments))
				}
				fmt.Fprintf(tw, "%s\t%s\t%d GB\t%s\t%s\n", shortID(v.Id), v.Name, v.SizeGb, att, age(now, v.CreatedAt))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print full IDs only")
	cmd.Flags().StringArrayVar(&tagArgs, "tag", nil, "only volumes tagged `KEY=VALUE`; repeatable (all must match)")
	return cmd
}

func (a *app) volumeGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "get VOLUME",
		Aliases: []string{"inspect"},
		Short:   "Show a volume as JSON",
		Args:    exactArgs(1, "exactly one volume"),
		RunE:    a.showRun(byRef((*client.ClientWithResponses).GetVolumeWithResponse)),
	}
}

func (a *app) volumeRmCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "rm VOLUME...",
		Aliases: []string{"delete"},
		Short:   "Delete volumes and their data (refused while attached)",
		Args:    minArgs(1, "at least one volume"),
		RunE:    a.eachRun(byRef((*client.ClientWithResponses).DeleteVolumeWithResponse), http.StatusNoContent),
	}
}
