package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"hypeman/internal/guest/guestconfig"
)

// NetworkConfigurer applies a network configuration in the guest (the init
// implements it: NIC, routes and the generated /etc files). Errors wrapped
// with BadRequest are reported to the host as CodeBadRequest.
type NetworkConfigurer interface {
	ConfigureNetwork(ctx context.Context, n guestconfig.Network) error
}

// Reseeder adds entropy to the guest's random number generator.
type Reseeder interface {
	Reseed(seed []byte) error
}

// Seed size limits for reseed requests. The host sends 64 bytes.
const (
	MinSeed = 16
	MaxSeed = 4096
)

// badRequestError marks an error caused by the request itself.
type badRequestError struct{ err error }

func (e badRequestError) Error() string { return e.err.Error() }
func (e badRequestError) Unwrap() error { return e.err }

// BadRequest marks err as caused by the request (reported as
// CodeBadRequest, so the host does not retry it as is).
func BadRequest(err error) error {
	if err == nil {
		return nil
	}
	return badRequestError{err: err}
}

func (s *Server) configureNetwork(ctx context.Context, n *guestconfig.Network, log *slog.Logger) Response {
	if n == nil {
		return Response{Error: "configure_network: no network in request", Code: CodeBadRequest}
	}
	if s.Network == nil {
		return Response{Error: "configure_network: this guest cannot configure its network"}
	}
	t0 := time.Now()
	if err := s.Network.ConfigureNetwork(ctx, *n); err != nil {
		log.Error("configure network", "err", err)
		return errorResponse(err)
	}
	log.Info("network configured", "address", n.Address, "mac", n.MAC, "took", time.Since(t0))
	return Response{}
}

func (s *Server) reseed(seed []byte, log *slog.Logger) Response {
	if len(seed) < MinSeed || len(seed) > MaxSeed {
		return Response{Error: fmt.Sprintf("reseed: seed is %d bytes, want %d..%d", len(seed), MinSeed, MaxSeed), Code: CodeBadRequest}
	}
	rng := s.RNG
	if rng == nil {
		rng = KernelRNG{}
	}
	if err := rng.Reseed(seed); err != nil {
		log.Error("reseed", "err", err)
		return errorResponse(err)
	}
	log.Info("RNG reseeded", "bytes", len(seed))
	return Response{}
}

// KernelRNG feeds the Linux kernel RNG through ioctls on a random device.
type KernelRNG struct {
	// Path is the device, default /dev/urandom.
	Path string
}

// Reseed mixes seed into the kernel's input pool, crediting it as full
// entropy (RNDADDENTROPY, the host's seed comes from its CSPRNG), then
// forces the kernel CRNG to reseed from the pool at once (RNDRESEEDCRNG).
// Without the forced reseed a fork's CRNG would keep producing the
// source's stream until its next scheduled reseed (up to a minute later).
// Only the kernel RNG is reseeded: a program's own user-space generator
// state is a copy of its source's until the program reseeds it itself.
func (k KernelRNG) Reseed(seed []byte) error {
	path := k.Path
	if path == "" {
		path = "/dev/urandom"
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("reseed: %w", err)
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	buf := make([]byte, 8+len(seed)+3) // buf[] is a __u32 array: pad
	binary.NativeEndian.PutUint32(buf[0:4], uint32(8*len(seed)))
	binary.NativeEndian.PutUint32(buf[4:8], uint32(len(seed)))
	copy(buf[8:], seed)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&buf[0]))); errno != 0 {
		return fmt.Errorf("reseed: RNDADDENTROPY on %s: %w", path, errno)
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); errno != 0 {
		// ENODATA: the CRNG is not initialized yet (it will seed from the
		// pool, seed included, when it is).
		if !errors.Is(errno, unix.ENODATA) {
			return fmt.Errorf("reseed: RNDRESEEDCRNG on %s: %w", path, errno)
		}
	}
	return nil
}

// ConfigureNetwork re-addresses the guest: its NIC gets n's MAC (taking the
// link down if it changes), its old addresses are removed, n's address and
// default route are set, /etc/resolv.conf and /etc/hosts are rewritten and
// a gratuitous ARP announces the address. Used after a fork is restored
// (the fork wakes up with its source's MAC and IP). A bad configuration is
// a RemoteError with CodeBadRequest and leaves the guest's network as it was.
func (c *Client) ConfigureNetwork(ctx context.Context, n guestconfig.Network) error {
	_, _, _, cleanup, err := c.call(ctx, Request{Op: OpConfigureNetwork, Network: &n})
	if err != nil {
		return err
	}
	cleanup()
	return nil
}

// Reseed adds seed (MinSeed..MaxSeed bytes from the host's CSPRNG; 64 is
// plenty) to the guest kernel RNG and makes the kernel reseed its CRNG from
// it, so a fork's random stream diverges from its source's.
func (c *Client) Reseed(ctx context.Context, seed []byte) error {
	_, _, _, cleanup, err := c.call(ctx, Request{Op: OpReseed, Seed: seed})
	if err != nil {
		return err
	}
	cleanup()
	return nil
}
