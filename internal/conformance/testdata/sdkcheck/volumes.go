package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/kernel/hypeman-go"
	"github.com/kernel/hypeman-go/option"
)

// tarGz is a tar.gz of name → content files.
func tarGz(files ...[2]string) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, f := range files {
		tw.WriteHeader(&tar.Header{Name: f[0], Mode: 0o644, Size: int64(len(f[1])), Typeflag: tar.TypeReg, ModTime: time.Unix(1700000000, 0)})
		tw.Write([]byte(f[1]))
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

// runVolumes drives the volume routes: create empty, create from a tar.gz
// body (streamed), list by tag, get, a refused hostile archive, delete.
func runVolumes() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := hypeman.NewClient(
		option.WithBaseURL(os.Getenv("HYPEMAN_BASE_URL")),
		option.WithAPIKey(os.Getenv("HYPEMAN_API_KEY")),
		option.WithMaxRetries(0),
	)
	empty, err := c.Volumes.New(ctx, hypeman.VolumeNewParams{Name: "sdk-empty", SizeGB: 2, Tags: map[string]string{"via": "sdk"}})
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	if err := check(empty.ID != "" && empty.Name == "sdk-empty" && empty.SizeGB == 2 && !empty.CreatedAt.IsZero() &&
		empty.Tags["via"] == "sdk" && len(empty.Attachments) == 0, "create empty: %+v", empty); err != nil {
		return err
	}
	seeded, err := c.Volumes.NewFromArchive(ctx, bytes.NewReader(tarGz([2]string{"hello.txt", "hi"})), hypeman.VolumeNewFromArchiveParams{
		Name: "sdk-archive", SizeGB: 1, ID: hypeman.Opt("sdk-archive-id"), Tags: map[string]string{"via": "sdk", "kind": "archive"},
	})
	if err != nil {
		return fmt.Errorf("create from archive: %w", err)
	}
	if err := check(seeded.ID == "sdk-archive-id" && seeded.Name == "sdk-archive" && seeded.SizeGB == 1 && seeded.Tags["kind"] == "archive",
		"create from archive: %+v", seeded); err != nil {
		return err
	}
	list, err := c.Volumes.List(ctx, hypeman.VolumeListParams{Tags: map[string]string{"kind": "archive"}})
	if err != nil {
		return fmt.Errorf("list: %w", err)
	}
	if err := check(len(*list) == 1 && (*list)[0].ID == seeded.ID, "list tags[kind]=archive: %d volumes", len(*list)); err != nil {
		return err
	}
	got, err := c.Volumes.Get(ctx, "sdk-empty")
	if err != nil {
		return fmt.Errorf("get: %w", err)
	}
	if err := check(got.ID == empty.ID, "get by name: %s", got.ID); err != nil {
		return err
	}
	_, err = c.Volumes.NewFromArchive(ctx, bytes.NewReader(tarGz([2]string{"../escape", "x"})), hypeman.VolumeNewFromArchiveParams{Name: "sdk-evil", SizeGB: 1})
	var apiErr *hypeman.Error
	if err := check(errors.As(err, &apiErr) && apiErr.StatusCode == http.StatusBadRequest && strings.Contains(err.Error(), "../escape"),
		"hostile archive refused: %v", err); err != nil {
		return err
	}
	for _, id := range []string{empty.ID, seeded.ID} {
		if err := c.Volumes.Delete(ctx, id); err != nil {
			return fmt.Errorf("delete %s: %w", id, err)
		}
	}
	_, err = c.Volumes.Get(ctx, empty.ID)
	return check(errors.As(err, &apiErr) && apiErr.StatusCode == http.StatusNotFound, "get after delete: %v", err)
}
