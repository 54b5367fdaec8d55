package guestinit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// ModulesListPath is where the initrd lists the modules to load, one
// absolute .ko path per line, in load order (dependencies first).
const ModulesListPath = "/etc/hypeman/modules.list"

// ParseModuleList parses a modules.list: blank lines and "#" comments are
// ignored, every other line must be an absolute path.
func ParseModuleList(r io.Reader) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !path.IsAbs(line) {
			return nil, fmt.Errorf("modules list line %d: %q is not an absolute path", n, line)
		}
		out = append(out, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules list: %w", err)
	}
	return out, nil
}

// ModuleError reports which module failed to load and why.
type ModuleError struct {
	Path string
	Err  error
}

func (e *ModuleError) Error() string { return fmt.Sprintf("load module %s: %v", e.Path, e.Err) }
func (e *ModuleError) Unwrap() error { return e.Err }

// moduleFlags returns the finit_module flags for a module file: compressed
// modules are decompressed by the kernel (CONFIG_MODULE_DECOMPRESS).
func moduleFlags(p string) int {
	for _, ext := range []string{".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(p, ext) {
			return unix.MODULE_INIT_COMPRESSED_FILE
		}
	}
	return 0
}

// LoadModules loads the modules in order with finit_module(2). A module that
// is already loaded (or built in) is not an error.
func LoadModules(paths []string) error {
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return &ModuleError{Path: p, Err: err}
		}
		err = unix.FinitModule(int(f.Fd()), "", moduleFlags(p))
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return &ModuleError{Path: p, Err: err}
		}
	}
	return nil
}

// LoadModuleList reads listPath and loads its modules. A missing list means
// the kernel needs no modules.
func LoadModuleList(listPath string) error {
	f, err := os.Open(listPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open modules list: %w", err)
	}
	defer f.Close()
	mods, err := ParseModuleList(f)
	if err != nil {
		return err
	}
	return LoadModules(mods)
}
