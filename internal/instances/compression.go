package instances

// How saved memory state is compressed, and the delayed compression of a
// Standby instance's state.
//
// Which compression applies: the request's (StandbyParams, SnapshotParams)
// over the instance's SnapshotPolicy over the server default
// (Config.SnapshotCompression). "None" given explicitly wins over a
// default like any other setting.
//
// When: a snapshot and an undelayed standby compress while the state
// streams out of the VMM (one pass, nothing uncompressed on disk). A
// standby with a compression delay saves uncompressed (the fastest
// standby), and a job converts the state after the delay:
//   - The job converts into standby.next-<random> beside the standby dir
//     without holding the instance's op lock, so restore, fork and
//     snapshot are never blocked by it.
//   - It then takes the op lock, checks that it is still the instance's
//     current job, and swaps the two dirs with one atomic exchange. The
//     metadata (state "compressed", sizes) is written after; a crash in
//     between leaves a valid standby dir and a "compressing" record, which
//     the next daemon simply converts again (a byte copy).
//   - Everything that consumes or replaces the standby state (restore,
//     delete, snapshot restore, a new standby) first cancels the job under
//     the op lock and waits for its conversion to stop, then removes its
//     output: a cancelled job never touches the instance again.
//   - One job converts at a time (a second one waits), so a burst of
//     standbys does not starve running guests of CPU.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"hypeman/internal/fsutil"
	"hypeman/internal/hypervisor"
)

// SnapshotPolicy is an instance's default compression for its snapshots and
// standbys (set at create; forks inherit it).
type SnapshotPolicy struct {
	// Compression nil = the server default.
	Compression *hypervisor.Compression `json:"compression,omitempty"`
	// StandbyCompressionDelay postpones the compression of a standby's
	// state (the standby itself saves uncompressed); 0 = compress while
	// saving. Snapshots always compress while saving.
	StandbyCompressionDelay time.Duration `json:"standby_compression_delay,omitempty"`
}

// StandbyParams is a standby request.
type StandbyParams struct {
	// Compression nil = the instance's policy, else the server default.
	Compression *hypervisor.Compression
	// CompressionDelay nil = the instance's policy (default 0).
	CompressionDelay *time.Duration
}

// CompressionState says where a saved memory state is in its compression.
type CompressionState string

const (
	CompressionStateNone        CompressionState = "none"        // stored uncompressed, nothing pending
	CompressionStateCompressing CompressionState = "compressing" // delayed compression pending or running
	CompressionStateCompressed  CompressionState = "compressed"
	CompressionStateError       CompressionState = "error" // compression failed; the state is intact, uncompressed
)

// StandbyCompression describes a Standby instance's saved state.
type StandbyCompression struct {
	// Compression is the setting the state is (or will be) stored with.
	Compression hypervisor.Compression `json:"compression"`
	State       CompressionState       `json:"state"`
	Error       string                 `json:"error,omitempty"`
	// CompressAt is when a pending delayed compression starts.
	CompressAt *time.Time `json:"compress_at,omitempty"`
	// CompressedBytes is the stored state size when compressed;
	// UncompressedBytes the state's stream size.
	CompressedBytes   int64 `json:"compressed_bytes,omitempty"`
	UncompressedBytes int64 `json:"uncompressed_bytes,omitempty"`
}

// maxCompressionDelay bounds delays (a typo like "5000h" is refused).
const maxCompressionDelay = 7 * 24 * time.Hour

// standbyNextPrefix names a delayed compression's output dir.
const standbyNextPrefix = standbyDir + ".next-"

// compressionArg validates a requested compression; field prefixes the
// error's field ("" or "snapshot_policy.").
func compressionArg(prefix string, c *hypervisor.Compression) error {
	if c == nil {
		return nil
	}
	if err := c.Validate(); err != nil {
		var ce *hypervisor.CompressionError
		if errors.As(err, &ce) {
			return &InvalidArgumentError{Field: prefix + ce.Field, Reason: ce.Reason}
		}
		return &InvalidArgumentError{Field: prefix + "compression", Reason: err.Error()}
	}
	return nil
}

func delayArg(field string, d *time.Duration) error {
	if d != nil && (*d < 0 || *d > maxCompressionDelay) {
		return &InvalidArgumentError{Field: field, Reason: fmt.Sprintf("%s is out of range: use a duration from 0s to %s", *d, maxCompressionDelay)}
	}
	return nil
}

func validateSnapshotPolicy(p *SnapshotPolicy) error {
	if p == nil {
		return nil
	}
	if err := compressionArg("snapshot_policy.", p.Compression); err != nil {
		return err
	}
	return delayArg("snapshot_policy.standby_compression_delay", &p.StandbyCompressionDelay)
}

// compressionFor resolves request > instance policy > server default.
func (m *Manager) compressionFor(req *hypervisor.Compression, policy *SnapshotPolicy) hypervisor.Compression {
	switch {
	case req != nil:
		return *req
	case policy != nil && policy.Compression != nil:
		return *policy.Compression
	}
	return m.cfg.SnapshotCompression
}

// standbyPlan resolves a standby's compression and delay.
func (m *Manager) standbyPlan(p StandbyParams, policy *SnapshotPolicy) (hypervisor.Compression, time.Duration) {
	c := m.compressionFor(p.Compression, policy)
	var delay time.Duration
	switch {
	case p.CompressionDelay != nil:
		delay = *p.CompressionDelay
	case policy != nil:
		delay = policy.StandbyCompressionDelay
	}
	if !c.Enabled() {
		delay = 0
	}
	return c, delay
}

// savedCompression describes a state just written as info says.
func savedCompression(info *hypervisor.SnapshotInfo) StandbyCompression {
	sc := StandbyCompression{Compression: info.Compression, State: CompressionStateNone, UncompressedBytes: info.StreamBytes}
	if info.Compression.Enabled() {
		sc.State, sc.CompressedBytes = CompressionStateCompressed, info.StateBytes
	}
	return sc
}

// compressJob is one pending or running delayed compression.
type compressJob struct {
	ctx    context.Context
	cancel context.CancelFunc
	timer  *time.Timer
	// converted is closed once the job will no longer write outside the
	// op lock (conversion ended, or it never started).
	converted chan struct{}
}

// scheduleCompression starts the delayed compression e's metadata asks
// for, if any (caller holds e.op).
func (m *Manager) scheduleCompression(e *entry) {
	m.mu.Lock() // orders jobs.Add before stopCompressions' Wait
	defer m.mu.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	sc := e.meta.StandbyCompression
	if !e.meta.HasSnapshot || sc.State != CompressionStateCompressing || e.compress != nil || e.deleted {
		return
	}
	select {
	case <-m.closed:
		return
	default:
	}
	var delay time.Duration
	if sc.CompressAt != nil {
		delay = max(time.Until(*sc.CompressAt), 0)
	}
	ctx, cancel := context.WithCancel(context.Background())
	j := &compressJob{ctx: ctx, cancel: cancel, converted: make(chan struct{})}
	e.compress = j
	m.jobs.Add(1)
	j.timer = time.AfterFunc(delay, func() {
		defer m.jobs.Done()
		m.runCompression(e, j, sc.Compression)
	})
}

// cancelCompression stops e's delayed compression, waits until it no
// longer writes, and removes its output (caller holds e.op). The metadata
// is left to the caller, which is replacing the state anyway.
func (m *Manager) cancelCompression(e *entry) {
	e.mu.Lock()
	j := e.compress
	e.compress = nil
	e.mu.Unlock()
	if j == nil {
		return
	}
	j.cancel()
	if j.timer.Stop() {
		m.jobs.Done() // the job never ran
	} else {
		<-j.converted
	}
	removeStandbyNext(m.dir(e.meta.ID))
}

// removeStandbyNext deletes the outputs of cancelled or interrupted
// delayed compressions in an instance dir.
func removeStandbyNext(dir string) {
	matches, _ := filepath.Glob(filepath.Join(dir, standbyNextPrefix+"*"))
	for _, p := range matches {
		os.RemoveAll(p)
	}
}

func (m *Manager) runCompression(e *entry, j *compressJob, c hypervisor.Compression) {
	e.mu.Lock()
	id := e.meta.ID
	e.mu.Unlock()
	dir := m.dir(id)
	select {
	case m.compressSlot <- struct{}{}:
	case <-j.ctx.Done():
		close(j.converted)
		return
	}
	start := time.Now()
	next := filepath.Join(dir, standbyNextPrefix+newID())
	info, err := m.cfg.Hypervisor.ConvertState(j.ctx, filepath.Join(dir, standbyDir), next, c)
	<-m.compressSlot
	close(j.converted)
	if j.ctx.Err() != nil {
		return // cancelled: the canceller cleans up
	}

	e.op.Lock()
	defer e.op.Unlock()
	e.mu.Lock()
	current := e.compress == j && !e.deleted
	e.mu.Unlock()
	if !current {
		return
	}
	if err == nil {
		err = fsutil.Exchange(next, filepath.Join(dir, standbyDir))
	}
	os.RemoveAll(next) // the old, uncompressed state after the exchange
	e.mu.Lock()
	e.compress = nil
	sc := e.meta.StandbyCompression
	sc.CompressAt = nil
	if err != nil {
		sc.State, sc.Error = CompressionStateError, err.Error()
	} else {
		sc = savedCompression(info)
	}
	e.meta.StandbyCompression = sc
	perr := m.persist(e)
	e.mu.Unlock()
	if perr != nil {
		m.log.Error("persist after standby compression", "id", id, "err", perr)
	}
	if err != nil {
		m.logf(id, "standby: compressing the saved state (%s) failed, it stays uncompressed: %v", c, err)
		return
	}
	m.logf(id, "standby: compressed the saved state (%s) from %d to %d bytes in %s", c, info.StreamBytes, info.StateBytes,
		time.Since(start).Round(time.Millisecond))
}

// stopCompressions cancels the jobs Close took from the entries (daemon
// shutdown) and waits for all jobs to end; the next daemon reschedules
// them from the metadata.
func (m *Manager) stopCompressions(jobs []*compressJob) {
	for _, j := range jobs {
		j.cancel()
		if j.timer.Stop() {
			m.jobs.Done()
		}
	}
	m.jobs.Wait()
}
