package cli

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/spf13/cobra"

	"hypeman/internal/api/client"
)

// ociRefName is the annotation an OCI layout uses to name its images.
const ociRefName = "org.opencontainers.image.ref.name"

func (a *app) pushCommand() *cobra.Command {
	var export exportFlags
	cmd := &cobra.Command{
		Use:   "push ARCHIVE NAME[:TAG] | push --to TARGET IMAGE",
		Short: "Push a local image archive to the server, or an image from the server to a registry",
		Long: `Push uploads an image from ARCHIVE to the server's built-in registry
(<base-url>/v2/) as NAME:TAG (TAG defaults to latest), then follows its
conversion like pull and prints the image name.

ARCHIVE is a "docker save" tarball (docker-archive), an OCI image layout
tarball, or an OCI image layout directory; gzip-compressed tarballs are
accepted. The API key is sent as the password of HTTP Basic auth.

With --to, the server pushes its image IMAGE to the registry reference
TARGET (POST /pushes) as it was pulled: same digest, same layers. Push
follows it until it is pushed and prints TARGET@DIGEST (--detach: prints
the push id at once; see hypeman pushes). Registry credentials: --username
with --password-stdin, or --registry-token (or HYPEMAN_REGISTRY_TOKEN).`,
		Example: `  docker save myapp:dev -o myapp.tar && hypeman push myapp.tar myapp:dev
  skopeo copy docker://alpine:3.20 oci-archive:alpine.tar && hypeman push alpine.tar alpine:3.20
  echo "$PASS" | hypeman push --to registry.example.com/team/app:1 --username me --password-stdin app:1`,
		Args: func(cmd *cobra.Command, args []string) error {
			if export.to != "" {
				return exactArgs(1, "one server image with --to")(cmd, args)
			}
			for _, f := range []string{"detach", "insecure", "username", "password-stdin", "registry-token"} {
				if cmd.Flags().Changed(f) {
					return &usageErr{cmd: cmd.CommandPath(), err: fmt.Errorf("--%s goes with --to (a push from the server to a registry)", f)}
				}
			}
			return exactArgs(2, "an archive and a NAME[:TAG] (or --to TARGET and one server image)")(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if export.to != "" {
				return a.exportImage(cmd, args[0], &export)
			}
			ctx := cmd.Context()
			target := args[1]
			if strings.Contains(target, "@") {
				return &usageErr{cmd: cmd.CommandPath(), err: fmt.Errorf("push needs NAME[:TAG], not a digest: the server imports tags")}
			}
			u, err := a.serverURL()
			if err != nil {
				return err
			}
			var nameOpts []name.Option
			if u.Scheme == "http" {
				nameOpts = append(nameOpts, name.Insecure)
			}
			ref, err := name.NewTag(u.Host+"/"+target, nameOpts...)
			if err != nil {
				return &usageErr{cmd: cmd.CommandPath(), err: fmt.Errorf("invalid image name %q: %w", target, err)}
			}
			tmp, err := os.MkdirTemp("", "hypeman-push-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(tmp)
			img, err := openArchive(args[0], tmp, ref.TagStr())
			if err != nil {
				return err
			}
			if err := a.pushImage(ctx, ref, img); err != nil {
				return err
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			imported := ref.RepositoryStr() + ":" + ref.TagStr()
			first, body, err := a.awaitImport(ctx, c, imported)
			if err != nil {
				return err
			}
			return a.finishImage(ctx, c, first, body)
		},
	}
	export.bind(cmd)
	return cmd
}

// pushImage uploads img to ref with progress on stderr.
func (a *app) pushImage(ctx context.Context, ref name.Tag, img remote.Taggable) error {
	var auth authn.Authenticator = authn.Anonymous
	if key := a.apiKey(); key != "" {
		auth = &authn.Basic{Username: "hypeman", Password: key}
	}
	tr := a.transport
	if tr == nil {
		tr = http.DefaultTransport
	}
	updates := make(chan v1.Update, 64)
	done := make(chan struct{})
	shown := make(chan struct{})
	p := a.newProgress()
	label := ref.RepositoryStr() + ":" + ref.TagStr()
	var total int64
	go func() {
		defer close(shown)
		show := func(u v1.Update) {
			total = max(total, u.Total)
			p.update(transfer{Name: label, Status: "pushing", BytesDone: u.Complete, BytesTotal: u.Total})
		}
		for {
			select {
			case u, ok := <-updates:
				if !ok {
					return
				}
				show(u)
			case <-done:
				// The channel is closed by the push, except when it failed
				// before starting: drain what is buffered and stop.
				for {
					select {
					case u, ok := <-updates:
						if !ok {
							return
						}
						show(u)
					default:
						return
					}
				}
			}
		}
	}()
	p.update(transfer{Name: label, Status: "pushing"})
	err := remote.Push(ref, img,
		remote.WithContext(ctx), remote.WithAuth(auth), remote.WithTransport(tr),
		remote.WithUserAgent(userAgent()), remote.WithProgress(updates))
	close(done)
	<-shown
	if err != nil {
		p.finish()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("push to %s: %w", ref.RegistryStr(), explainPushError(err))
	}
	p.update(transfer{Name: label, Status: "pushed", Detail: []string{humanBytes(total)}})
	p.finish()
	return nil
}

// explainPushError adds the likely fix to an authentication failure.
func explainPushError(err error) error {
	msg := err.Error()
	if strings.Contains(msg, "UNAUTHORIZED") || strings.Contains(msg, "401") {
		return fmt.Errorf("%w (set HYPEMAN_API_KEY to a token with image:write)", err)
	}
	if strings.Contains(msg, "DENIED") || strings.Contains(msg, "403") {
		return fmt.Errorf("%w (the token needs the image:write scope)", err)
	}
	return err
}

// awaitImport waits for the server to register the pushed tag (it does so
// when the manifest arrives) and returns the image.
func (a *app) awaitImport(ctx context.Context, c *client.ClientWithResponses, ref string) (*client.Image, []byte, error) {
	deadline := time.Now().Add(a.importPatience)
	for {
		r, err := c.GetImageWithResponse(ctx, ref)
		err = a.check(ctx, r, err, http.StatusOK)
		if err == nil {
			return r.JSON200, r.Body, nil
		}
		var ae *APIError
		if !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
			return nil, nil, err
		}
		if time.Now().After(deadline) {
			return nil, nil, fmt.Errorf("the image was pushed but the server did not import %s (see its log)", ref)
		}
		if err := sleep(ctx, a.pollInterval); err != nil {
			return nil, nil, err
		}
	}
}

// openArchive loads the image in path: an OCI layout directory, or a
// (possibly gzipped) docker-archive or OCI layout tarball. tmp is a scratch
// directory that must outlive the returned image. tag picks among several
// images of an OCI layout by their ref.name annotation.
func openArchive(p, tmp, tag string) (remote.Taggable, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		ii, err := layout.ImageIndexFromPath(p)
		if err != nil {
			return nil, fmt.Errorf("%s is a directory but not an OCI image layout: %w", p, err)
		}
		return pickFromIndex(ii, tag, p)
	}
	p, err = gunzipIfNeeded(p, tmp)
	if err != nil {
		return nil, err
	}
	entries, err := tarEntries(p)
	if err != nil {
		return nil, fmt.Errorf("%s is not a tar archive: %w", p, err)
	}
	switch {
	case entries["manifest.json"]:
		img, err := tarball.ImageFromPath(p, nil)
		if err != nil {
			return nil, fmt.Errorf("read docker archive %s: %w", p, err)
		}
		return img, nil
	case entries["oci-layout"] && entries["index.json"]:
		dir := filepath.Join(tmp, "layout")
		if err := extractTar(p, dir); err != nil {
			return nil, fmt.Errorf("unpack OCI layout %s: %w", p, err)
		}
		ii, err := layout.ImageIndexFromPath(dir)
		if err != nil {
			return nil, fmt.Errorf("read OCI layout %s: %w", p, err)
		}
		return pickFromIndex(ii, tag, p)
	}
	return nil, fmt.Errorf("%s is neither a docker-archive (docker save) nor an OCI layout tarball: it has no manifest.json or oci-layout", p)
}

// gunzipIfNeeded returns p, or a decompressed copy in tmp when p is gzip.
func gunzipIfNeeded(p, tmp string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	magic, _ := br.Peek(2)
	if len(magic) < 2 || magic[0] != 0x1f || magic[1] != 0x8b {
		return p, nil
	}
	zr, err := gzip.NewReader(br)
	if err != nil {
		return "", fmt.Errorf("%s: %w", p, err)
	}
	out := filepath.Join(tmp, "archive.tar")
	w, err := os.Create(out)
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(w, zr); err != nil {
		w.Close()
		return "", fmt.Errorf("decompress %s: %w", p, err)
	}
	return out, w.Close()
}

// tarEntries lists the normalized names in a tar file.
func tarEntries(p string) (map[string]bool, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	names := map[string]bool{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		names[path.Clean(strings.TrimPrefix(h.Name, "./"))] = true
	}
	if len(names) == 0 {
		return nil, errors.New("empty archive")
	}
	return names, nil
}

// extractTar unpacks the directories and regular files of a tar into dir,
// refusing entries that would land outside it.
func extractTar(p, dir string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		rel := path.Clean(strings.TrimPrefix(h.Name, "./"))
		if rel == "." {
			continue
		}
		if !filepath.IsLocal(rel) {
			return fmt.Errorf("archive entry %q points outside the archive", h.Name)
		}
		dst := filepath.Join(dir, filepath.FromSlash(rel))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			w, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
			if err != nil {
				return err
			}
			if _, err := io.Copy(w, tr); err != nil {
				w.Close()
				return err
			}
			if err := w.Close(); err != nil {
				return err
			}
		}
	}
}

// pickFromIndex chooses what to push from an OCI layout's index: its only
// entry; else the entry whose ref.name annotation is tag; else the only
// linux/amd64 image.
func pickFromIndex(ii v1.ImageIndex, tag, what string) (remote.Taggable, error) {
	im, err := ii.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("read OCI layout %s: %w", what, err)
	}
	descs := im.Manifests
	if len(descs) == 0 {
		return nil, fmt.Errorf("OCI layout %s holds no images", what)
	}
	candidates := descs
	if len(candidates) > 1 {
		var byTag []v1.Descriptor
		for _, d := range descs {
			if n := d.Annotations[ociRefName]; n == tag || strings.HasSuffix(n, ":"+tag) {
				byTag = append(byTag, d)
			}
		}
		if len(byTag) > 0 {
			candidates = byTag
		}
	}
	if len(candidates) > 1 {
		var amd64 []v1.Descriptor
		for _, d := range candidates {
			if d.Platform != nil && d.Platform.OS == "linux" && d.Platform.Architecture == "amd64" {
				amd64 = append(amd64, d)
			}
		}
		if len(amd64) > 0 {
			candidates = amd64
		}
	}
	if len(candidates) != 1 {
		return nil, fmt.Errorf("OCI layout %s holds %d images and none is tagged %q: keep one image in it", what, len(descs), tag)
	}
	d := candidates[0]
	switch {
	case d.MediaType.IsIndex():
		return ii.ImageIndex(d.Digest)
	case d.MediaType.IsImage():
		return ii.Image(d.Digest)
	}
	return nil, fmt.Errorf("OCI layout %s: entry %s has media type %s, not an image", what, d.Digest, d.MediaType)
}
