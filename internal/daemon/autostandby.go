package daemon

import (
	"fmt"
	"os"
	"path/filepath"

	"hypeman/internal/autostandby"
	"hypeman/internal/network"
)

// newAutoStandby builds the auto-standby controller when guests sit on a
// bridge (their inbound connections then show in that namespace's
// conntrack table); nil otherwise (user-mode networking or none: the
// status routes answer unsupported).
func (d *Daemon) newAutoStandby() (*autostandby.Controller, error) {
	if d.Network == nil || d.Network.Mode() != network.ModeBridge {
		return nil, nil
	}
	dir := filepath.Join(d.Config.Paths().Root, "autostandby")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("auto-standby: %w", err)
	}
	c, err := autostandby.New(autostandby.Config{
		Instances: d.Instances, Events: d.Events,
		Observer:  autostandby.ConntrackObserver{InNS: d.Network.InNetNS},
		Metrics:   d.Metrics.NewAutoStandby(),
		Logger:    d.Logger.With("component", "autostandby"),
		HoldsFile: filepath.Join(dir, "holds.json"),
	})
	if err != nil {
		return nil, fmt.Errorf("auto-standby controller: %w", err)
	}
	return c, nil
}
