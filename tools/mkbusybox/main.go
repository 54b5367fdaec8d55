// Command mkbusybox writes a small OCI image (docker-archive tarball) built
// from the host's static busybox (Debian's busybox-static), so a fresh host
// without any registry can try hypeman at once:
//
//	go run ./tools/mkbusybox -o busybox.tar -tag demo:v1
//	hypeman push busybox.tar demo:v1
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func main() {
	out := flag.String("o", "busybox.tar", "output tarball (docker-archive)")
	tag := flag.String("tag", "demo:v1", "image tag recorded in the tarball")
	bb := flag.String("busybox", "/usr/bin/busybox", "static busybox binary")
	flag.Parse()
	if err := run(*out, *tag, *bb); err != nil {
		fmt.Fprintln(os.Stderr, "mkbusybox:", err)
		os.Exit(1)
	}
	fmt.Println("wrote", *out, "("+*tag+")")
}

func run(out, tag, bbPath string) error {
	bin, err := os.ReadFile(bbPath)
	if err != nil {
		return fmt.Errorf("%w (install Debian's busybox-static: make setup)", err)
	}
	list, err := exec.Command(bbPath, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(p string, mode int64) {
		tw.WriteHeader(&tar.Header{Name: p + "/", Typeflag: tar.TypeDir, Mode: mode})
	}
	file := func(p string, mode int64, data []byte) {
		tw.WriteHeader(&tar.Header{Name: p, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(data))})
		tw.Write(data)
	}
	for _, d := range []string{"bin", "etc", "root", "proc", "sys", "dev", "run", "var", "www"} {
		dir(d, 0o755)
	}
	dir("tmp", 0o1777)
	file("bin/busybox", 0o755, bin)
	for _, applet := range strings.Fields(string(list)) {
		if applet != "busybox" {
			tw.WriteHeader(&tar.Header{Name: "bin/" + applet, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777})
		}
	}
	file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"))
	file("etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n"))
	file("www/index.html", 0o644, []byte("<h1>hello from a hypeman VM</h1>\n"))
	if err := tw.Close(); err != nil {
		return err
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	img, err = mutate.Config(img, v1.Config{
		Env: []string{"PATH=/bin"},
		Cmd: []string{"httpd", "-f", "-v", "-p", "80", "-h", "/www"},
	})
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf.OS, cf.Architecture = "linux", "amd64"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	ref, err := name.NewTag(tag)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(out, ref, img)
}
