package testimage

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/klauspost/compress/gzip"
)

// Hostile images: what an attacker pushes or serves to make a pull cost the
// host far more than the download. Built in memory, deterministic.

// GzipBomb returns a layer holding one file, /bomb, of size zero bytes.
// Its gzip stream is about a thousandth of that (512 MiB → ~0.5 MB).
func GzipBomb(t testing.TB, size int64) v1.Layer {
	t.Helper()
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bomb", Size: size, Mode: 0o644, ModTime: modTime()}); err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, 1<<20)
	for left := size; left > 0; {
		n := min(left, int64(len(zeros)))
		if _, err := tw.Write(zeros[:n]); err != nil {
			t.Fatal(err)
		}
		left -= n
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	compressed := gz.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(compressed)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// ManyLayers returns an image of n one-file layers.
func ManyLayers(t testing.TB, n int) v1.Image {
	t.Helper()
	layers := make([]v1.Layer, n)
	for i := range layers {
		w := newTarWriter(t)
		w.file(fmt.Sprintf("f%05d", i), []byte{byte(i)}, 0o644, 0, 0)
		layers[i] = w.layer()
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return withPlatform(t, img, []string{"/bin/true"})
}

// BigConfig returns a one-layer image whose config carries envBytes of
// environment (a config blob of about that size).
func BigConfig(t testing.TB, envBytes int) v1.Image {
	t.Helper()
	w := newTarWriter(t)
	w.file("f", []byte("x"), 0o644, 0, 0)
	img, err := mutate.AppendLayers(empty.Image, w.layer())
	if err != nil {
		t.Fatal(err)
	}
	img = withPlatform(t, img, []string{"/bin/true"})
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	var env []string
	for i := 0; envBytes > 0; i++ {
		v := fmt.Sprintf("V%06d=%s", i, bytes.Repeat([]byte("x"), min(envBytes, 4096)))
		env = append(env, v)
		envBytes -= len(v)
	}
	cf.Config.Env = env
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

// WithLayers appends layers to a linux/amd64 image running cmd.
func WithLayers(t testing.TB, cmd []string, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return withPlatform(t, img, cmd)
}

func withPlatform(t testing.TB, img v1.Image, cmd []string) v1.Image {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Cmd = cmd
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}
