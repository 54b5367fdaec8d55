package network

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
)

// Bandwidth limits one VM's traffic, in bytes per second; 0 = unlimited.
//
// How it is enforced (tc, in the namespace that holds the bridge):
//   - Download (external → VM) leaves the host through the TAP, so a token
//     bucket (tbf) is the TAP's root qdisc.
//   - Upload (VM → external) enters the host through the TAP, where Linux
//     can only drop, not queue. Dropping (a policer) makes TCP saw-tooth well
//     below the limit, and act_police is not even built on every kernel
//     (this host's lacks it). So the TAP's ingress is redirected (u32 match
//     all + mirred) to an ifb device whose root qdisc is the same token
//     bucket: packets queue there and TCP settles at the limit.
//
// The qdiscs die with their devices, so deleting the TAP (and its ifb)
// removes the shaping.
type Bandwidth struct {
	Download int64
	Upload   int64
}

// IsZero reports whether nothing is limited.
func (b Bandwidth) IsZero() bool { return b.Download <= 0 && b.Upload <= 0 }

// ErrNoTC is returned when a limit is asked for and the tc binary
// (iproute2) is missing.
var ErrNoTC = errors.New("tc not found (install iproute2)")

// ifbName is the ifb device carrying a TAP's upload shaping: "hb" plus the
// TAP name's suffix ("hm0a640002" → "hb0a640002"), so it is derived, unique
// while the TAP lives, and never named like a TAP.
func ifbName(tap string) string { return "hb" + strings.TrimPrefix(tap, "hm") }

// isIFBName reports whether s is named like our ifb devices.
func isIFBName(s string) bool {
	return strings.HasPrefix(s, "hb") && isTAPName("hm"+s[2:])
}

// tbfLatency bounds how long a packet may wait in a token bucket; with the
// burst it sizes the queue.
const tbfLatency = "50ms"

// tbfBurst is the bucket size for a rate: 20 ms of traffic, at least 16
// KiB (a bucket smaller than one packet would drop every full-size
// packet). GSO packets larger than the bucket are segmented by tbf.
func tbfBurst(bytesPerSec int64) int64 { return max(bytesPerSec/50, 16<<10) }

// tbf renders a token bucket root qdisc on dev.
func tbf(dev string, bytesPerSec int64) string {
	return fmt.Sprintf("qdisc replace dev %s root tbf rate %sbit burst %d latency %s",
		dev, strconv.FormatInt(bytesPerSec*8, 10), tbfBurst(bytesPerSec), tbfLatency)
}

// shapingReset is the tc batch that removes whatever shaping tap has (run
// with -force: parts that are absent fail harmlessly).
func shapingReset(tap string) string {
	return fmt.Sprintf("qdisc del dev %s root\nqdisc del dev %s ingress\n", tap, tap)
}

// shapingScript is the tc batch that installs bw on tap (after
// shapingReset). Upload shaping needs the ifb device to exist and be up.
func shapingScript(tap string, bw Bandwidth) string {
	var b strings.Builder
	if bw.Download > 0 {
		b.WriteString(tbf(tap, bw.Download) + "\n")
	}
	if bw.Upload > 0 {
		ifb := ifbName(tap)
		fmt.Fprintf(&b, "qdisc add dev %s handle ffff: ingress\n", tap)
		fmt.Fprintf(&b, "filter add dev %s parent ffff: protocol all prio 1 u32 match u32 0 0 action mirred egress redirect dev %s\n", tap, ifb)
		b.WriteString(tbf(ifb, bw.Upload) + "\n")
	}
	return b.String()
}

// shape installs bw on l's TAP, replacing what was there. fresh says the
// TAP was just created (nothing to reset, and nothing to do without
// limits). An adopted TAP is always reset, so it never keeps limits it was
// given before.
func (m *Manager) shape(ctx context.Context, tap string, bw Bandwidth, fresh bool) error {
	if fresh && bw.IsZero() {
		return nil
	}
	bin, err := exec.LookPath("tc")
	if err != nil {
		if bw.IsZero() {
			return nil // nothing of ours can have shaped it without tc
		}
		return fmt.Errorf("shape %s: %w", tap, ErrNoTC)
	}
	if !fresh {
		_ = m.tc(ctx, bin, true, shapingReset(tap)) // absent parts fail harmlessly
	}
	if bw.Upload > 0 {
		if err := m.ensureIFB(ifbName(tap)); err != nil {
			return err
		}
	} else if err := m.deleteLink(ifbName(tap)); err != nil {
		return err
	}
	if bw.IsZero() {
		return nil
	}
	if err := m.tc(ctx, bin, false, shapingScript(tap, bw)); err != nil {
		return fmt.Errorf("shape %s: %w", tap, err)
	}
	return nil
}

// tc runs a tc batch inside the namespace.
func (m *Manager) tc(ctx context.Context, bin string, force bool, batch string) error {
	args := []string{"-batch", "-"}
	if force {
		args = append([]string{"-force"}, args...)
	}
	return m.runInNS(ctx, "tc", batch, bin, args...)
}

// ensureIFB creates (or adopts) an ifb device and brings it up.
func (m *Manager) ensureIFB(name string) error {
	return m.withLinks(func(h *netlink.Handle) error {
		link, err := h.LinkByName(name)
		switch {
		case isNotFound(err):
			la := netlink.NewLinkAttrs()
			la.Name = name
			if err := h.LinkAdd(&netlink.Ifb{LinkAttrs: la}); err != nil {
				return fmt.Errorf("create ifb %s: %w", name, err)
			}
			if link, err = h.LinkByName(name); err != nil {
				return fmt.Errorf("ifb %s: %w", name, err)
			}
		case err != nil:
			return fmt.Errorf("ifb %s: %w", name, err)
		case link.Type() != "ifb":
			return fmt.Errorf("ifb %s: a %s device of that name exists", name, link.Type())
		}
		if err := h.LinkSetUp(link); err != nil {
			return fmt.Errorf("ifb %s: up: %w", name, err)
		}
		return nil
	})
}

// orphanIFBs lists ifb devices named like ours whose TAP is not in keep.
func (m *Manager) orphanIFBs(keep map[string]bool) ([]string, error) {
	var out []string
	err := m.withLinks(func(h *netlink.Handle) (err error) {
		out, err = linkNames(h, func(l netlink.Link) bool {
			name := l.Attrs().Name
			return l.Type() == "ifb" && isIFBName(name) && !keep["hm"+name[2:]]
		})
		return err
	})
	return out, err
}
