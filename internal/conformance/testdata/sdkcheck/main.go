// Command sdkcheck drives hypemand with hypeman's Go SDK (kernel/hypeman-go,
// unmodified) through create, get, list, wait, stats, update and delete, and
// checks that the SDK's typed fields decode with real values. It is built
// and run by the conformance test (internal/conformance); it prints one
// line per check and exits 1 on the first failure.
//
// With the single argument "volumes" it drives the volume routes instead
// (volumes.go), booting nothing.
//
//	HYPEMAN_BASE_URL=... HYPEMAN_API_KEY=... sdkcheck IMAGE NAME
//	HYPEMAN_BASE_URL=... HYPEMAN_API_KEY=... sdkcheck volumes
package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/kernel/hypeman-go"
	"github.com/kernel/hypeman-go/option"
)

func main() {
	var err error
	switch {
	case len(os.Args) == 2 && os.Args[1] == "volumes":
		err = runVolumes()
	case len(os.Args) == 3:
		err = run(os.Args[1], os.Args[2])
	default:
		fmt.Fprintln(os.Stderr, "usage: sdkcheck IMAGE NAME | sdkcheck volumes")
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		os.Exit(1)
	}
	fmt.Println("PASS")
}

func check(ok bool, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if !ok {
		return errors.New(msg)
	}
	fmt.Println("ok:", msg)
	return nil
}

func run(image, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := hypeman.NewClient(
		option.WithBaseURL(os.Getenv("HYPEMAN_BASE_URL")),
		option.WithAPIKey(os.Getenv("HYPEMAN_API_KEY")),
		option.WithMaxRetries(0),
	)
	start := time.Now()
	in, err := c.Instances.New(ctx, hypeman.InstanceNewParams{
		Name: name, Image: image,
		Size: hypeman.Opt("512MB"), Vcpus: hypeman.Opt(int64(1)), OverlaySize: hypeman.Opt("1GB"),
		Env:  map[string]string{"GREETING": "hello"},
		Tags: map[string]string{"suite": "sdk", "run": name},
	})
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	if err := all(
		check(in.ID != "" && in.Name == name && in.Image == image, "create: id %q name %q image %q", in.ID, in.Name, in.Image),
		check(in.State == hypeman.InstanceStateInitializing || in.State == hypeman.InstanceStateRunning, "create: state %s", in.State),
		check(!in.CreatedAt.IsZero() && in.CreatedAt.After(start.Add(-time.Minute)), "create: created_at %s", in.CreatedAt),
		check(in.Hypervisor == "qemu-microvm", "create: hypervisor %q", in.Hypervisor),
		check(in.Size == "512MB" && in.Vcpus == 1 && in.OverlaySize == "1GB", "create: size %s vcpus %d overlay %s", in.Size, in.Vcpus, in.OverlaySize),
		check(in.Tags["suite"] == "sdk" && in.Env["GREETING"] == "hello", "create: tags %v env %v", in.Tags, in.Env),
	); err != nil {
		return err
	}

	w, err := c.Instances.Wait(ctx, in.ID, hypeman.InstanceWaitParams{State: hypeman.InstanceWaitParamsStateRunning, Timeout: hypeman.Opt("120s")})
	if err != nil {
		return fmt.Errorf("wait: %w", err)
	}
	if err := check(w.State == hypeman.WaitForStateResponseStateRunning && !w.TimedOut, "wait: state %s timed_out %v", w.State, w.TimedOut); err != nil {
		return err
	}

	got, err := c.Instances.Get(ctx, name)
	if err != nil {
		return fmt.Errorf("get: %w", err)
	}
	if err := all(
		check(got.ID == in.ID && got.State == hypeman.InstanceStateRunning, "get by name: id %s state %s", got.ID, got.State),
		check(!got.StartedAt.IsZero() && got.JSON.StoppedAt.Raw() == "null", "get: started_at %s, stopped_at %s", got.StartedAt, got.JSON.StoppedAt.Raw()),
		check(got.CurrentPhase == "running" && !got.CurrentPhaseSince.IsZero(), "get: current_phase %q since %s", got.CurrentPhase, got.CurrentPhaseSince),
		check(got.PhaseDurationsMs["running"] >= 0 && len(got.PhaseDurationsMs) >= 1, "get: phase_durations_ms %v", got.PhaseDurationsMs),
		check(got.JSON.ExitCode.Raw() == "null" && !got.HasSnapshot, "get: exit_code %s, has_snapshot %v", got.JSON.ExitCode.Raw(), got.HasSnapshot),
	); err != nil {
		return err
	}

	list, err := c.Instances.List(ctx, hypeman.InstanceListParams{Tags: map[string]string{"run": name}})
	if err != nil {
		return fmt.Errorf("list: %w", err)
	}
	if err := check(len(*list) == 1 && (*list)[0].ID == in.ID, "list by tag: %d instance(s)", len(*list)); err != nil {
		return err
	}
	none, err := c.Instances.List(ctx, hypeman.InstanceListParams{Tags: map[string]string{"run": name + "-other"}})
	if err != nil {
		return fmt.Errorf("list: %w", err)
	}
	if err := check(len(*none) == 0, "list by another tag: %d instance(s)", len(*none)); err != nil {
		return err
	}

	st, err := c.Instances.Stats(ctx, in.ID)
	if err != nil {
		return fmt.Errorf("stats: %w", err)
	}
	if err := all(
		check(st.InstanceID == in.ID && st.InstanceName == name, "stats: instance %s %s", st.InstanceID, st.InstanceName),
		check(st.CPUSeconds > 0 && st.MemoryRssBytes > 0 && st.MemoryVmsBytes >= st.MemoryRssBytes, "stats: cpu %.2fs rss %d vms %d", st.CPUSeconds, st.MemoryRssBytes, st.MemoryVmsBytes),
		check(st.AllocatedVcpus == 1 && st.AllocatedMemoryBytes >= 512<<20, "stats: allocated %d vcpus, %d bytes", st.AllocatedVcpus, st.AllocatedMemoryBytes),
	); err != nil {
		return err
	}

	res, err := c.Resources.Get(ctx)
	if err != nil {
		return fmt.Errorf("resources: %w", err)
	}
	var held *hypeman.ResourceAllocation
	for i := range res.Allocations {
		if res.Allocations[i].InstanceID == in.ID {
			held = &res.Allocations[i]
		}
	}
	if err := all(
		check(held != nil && held.MemoryBytes == 512<<20 && held.CPU == 1 && held.DiskBytes == 1<<30, "resources: allocation %+v", held),
		check(res.Memory.Allocated >= 512<<20 && res.Memory.EffectiveLimit == res.Memory.Capacity && res.CPU.OversubRatio == 4,
			"resources: memory %d of %d, cpu ratio %.1f", res.Memory.Allocated, res.Memory.EffectiveLimit, res.CPU.OversubRatio),
	); err != nil {
		return err
	}

	// The SDK has no typed health_check yet: send hypeman's nested shape as
	// raw JSON and read it back from the response body.
	var raw map[string]any
	_, err = c.Instances.Update(ctx, in.ID, hypeman.InstanceUpdateParams{},
		option.WithJSONSet("health_check", map[string]any{"type": "tcp", "tcp": map[string]any{"port": 80}, "interval": "5s"}),
		option.WithJSONSet("restart_policy", map[string]any{"policy": "on_failure", "max_attempts": 2}),
		option.WithResponseBodyInto(&raw))
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	hc, _ := raw["health_check"].(map[string]any)
	tcp, _ := hc["tcp"].(map[string]any)
	rp, _ := raw["restart_policy"].(map[string]any)
	if err := all(
		check(hc["type"] == "tcp" && tcp["port"] == float64(80) && hc["interval"] == "5s", "update: health_check %v", hc),
		check(rp["policy"] == "on_failure" && rp["max_attempts"] == float64(2), "update: restart_policy %v", rp),
	); err != nil {
		return err
	}

	if err := c.Instances.Delete(ctx, in.ID); err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	_, err = c.Instances.Get(ctx, in.ID)
	var apiErr *hypeman.Error
	if err := check(errors.As(err, &apiErr) && apiErr.StatusCode == http.StatusNotFound, "get after delete: %v", err); err != nil {
		return err
	}
	all, err := c.Instances.List(ctx, hypeman.InstanceListParams{})
	if err != nil {
		return fmt.Errorf("list: %w", err)
	}
	return check(!slices.ContainsFunc(*all, func(i hypeman.Instance) bool { return i.ID == in.ID }), "list after delete: gone")
}

// all returns the first error.
func all(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
