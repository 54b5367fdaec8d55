package cli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"hypeman/internal/api/client"
)

// PullError is an image that ended in status failed.
type PullError struct {
	Name    string
	Kind    string // the image's error_kind
	Message string
}

func (e *PullError) Error() string {
	msg := fmt.Sprintf("image %s failed: %s", e.Name, e.Message)
	if e.Kind != "" {
		msg += " (" + e.Kind + ")"
	}
	return msg
}

func (a *app) pullCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "pull IMAGE",
		Short: "Pull an image and convert it to a VM root disk",
		Long: `Pull asks the server to pull IMAGE from its registry and convert it, then
follows the progress until the image is ready (or failed). A progress bar
is drawn when stderr is a terminal, plain status lines otherwise. The
normalized image name is printed when it is ready; with --format json the
image object.

Interrupting stops following; the pull continues on the server.`,
		Example: `  hypeman pull alpine:3.20
  hypeman pull ghcr.io/org/app@sha256:...`,
		Args: exactArgs(1, "exactly one image reference"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := a.api()
			if err != nil {
				return err
			}
			r, err := c.CreateImageWithResponse(ctx, client.CreateImageRequest{Name: args[0]})
			if err := a.check(ctx, r, err, http.StatusAccepted); err != nil {
				return err
			}
			return a.finishImage(ctx, c, r.JSON202, r.Body)
		},
	}
}

// finishImage follows img to ready or failed and prints the result.
func (a *app) finishImage(ctx context.Context, c *client.ClientWithResponses, img *client.Image, body []byte) error {
	img, body, err := a.followImage(ctx, c, img, body)
	if err != nil {
		var pe *PullError
		if errors.As(err, &pe) && a.jsonOutput() {
			a.printRaw(body)
		}
		if errors.Is(err, context.Canceled) {
			fmt.Fprintf(a.stderr, "Stopped following %s; the server keeps working on it.\n", img.Name)
		}
		return err
	}
	if a.jsonOutput() {
		a.printRaw(body)
	} else {
		fmt.Fprintln(a.stdout, img.Name)
	}
	return nil
}

// followImage polls the image until it is ready or failed, showing
// progress. It returns the last image seen (and its body) even on error.
func (a *app) followImage(ctx context.Context, c *client.ClientWithResponses, img *client.Image, body []byte) (*client.Image, []byte, error) {
	p := a.newProgress()
	defer p.finish()
	for {
		p.update(imageTransfer(img))
		switch img.Status {
		case client.ImageStatusReady:
			return img, body, nil
		case client.ImageStatusFailed:
			return img, body, &PullError{Name: img.Name, Kind: deref(img.ErrorKind), Message: deref(img.Error)}
		}
		if err := sleep(ctx, a.pollInterval); err != nil {
			return img, body, err
		}
		r, err := c.GetImageWithResponse(ctx, img.Name)
		if err := a.check(ctx, r, err, http.StatusOK); err != nil {
			return img, body, err
		}
		img, body = r.JSON200, r.Body
	}
}

func (a *app) imagesCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "images",
		Aliases: []string{"image-ls"},
		Short:   "List images",
		Long:    "List the server's images with their status, digest, root disk size and age.",
		Args:    exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := a.api()
			if err != nil {
				return err
			}
			r, err := c.ListImagesWithResponse(ctx, nil)
			if done, err := a.listedAsJSON(ctx, r, err); done {
				return err
			}
			tw := a.table()
			fmt.Fprintln(tw, "NAME\tSTATUS\tDIGEST\tSIZE\tCREATED")
			now := a.now()
			for _, img := range *r.JSON200 {
				size := "-"
				if n := deref(img.SizeBytes); n > 0 {
					size = humanBytes(n)
				}
				status := string(img.Status)
				if img.Status == client.ImageStatusPulling && img.Progress != nil && img.Progress.BytesTotal > 0 {
					status = fmt.Sprintf("pulling %d%%", img.Progress.BytesDone*100/img.Progress.BytesTotal)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", img.Name, status, orDash(shortDigest(img.Digest)), size, age(now, img.CreatedAt))
			}
			return tw.Flush()
		},
	}
}

func (a *app) rmiCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "rmi IMAGE...",
		Short: "Delete images",
		Long: `Delete images from the server. An image that an instance uses cannot be
deleted (remove the instance first). Each deleted image is printed.`,
		Args: minArgs(1, "at least one image"),
		RunE: a.eachRun(byRef((*client.ClientWithResponses).DeleteImageWithResponse), http.StatusNoContent),
	}
}

// each runs fn for every argument, reporting failures as they happen; it
// fails (without a further message) if any did. An interrupt stops it.
func (a *app) each(ctx context.Context, args []string, fn func(arg string) error) error {
	failed := false
	for _, arg := range args {
		if err := fn(arg); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var ce *ConnError
			if errors.As(err, &ce) {
				return err // no point trying the others
			}
			fmt.Fprintf(a.stderr, "Error: %s: %v\n", arg, err)
			failed = true
		}
	}
	if failed {
		return errReported
	}
	return nil
}

// waitChunk is the timeout for one wait request: what is left, capped at
// what the server accepts, at least a millisecond.
func waitChunk(left, maxWait time.Duration) time.Duration {
	return max(min(left, maxWait).Round(time.Millisecond), time.Millisecond)
}
