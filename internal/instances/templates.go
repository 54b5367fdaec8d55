package instances

// Templates: hypeman's explicit template semantics (kernel/hypeman PR #229,
// "Introduce template as a VM state", later reverted upstream by #231; its
// routes and shapes are what our API serves).
//
// A Standby instance is promoted to Template (POST
// /instances/{id}/promote-template). A Template keeps its saved state as a
// fork source: forks of it are made the usual way from a standby source and
// the Template stays a Template. While forks of it exist it cannot be
// restored, started, deleted or demoted (409 naming the forks and what to
// do); with none left, demote makes it Standby again and restore
// un-promotes it then restores it (as in #229).
//
// Decisions that differ from or go beyond #229:
//   - No automatic promotion on the first fork from Standby: hypeman 0.3.0
//     (our wire target) lets a client fork a Standby instance and then
//     restore it; promoting implicitly would turn that restore into a 409.
//     Promotion is explicit only.
//   - A snapshot of a Template is refused (fork it, or demote it first): the
//     Template's state is for its forks, and the snapshot routes keep their
//     Running/Paused/Standby rule.
//   - Counts cannot drift: a fork records its Template (ForkOfTemplate) in
//     its own metadata before it exists, the Template's ForkCount is set
//     from the registered forks whenever one is added or removed (under the
//     Template's metadata lock), and load recounts every Template from the
//     forks that survived (half-made forks are discarded first).
//   - Every fork of a Template counts, whatever its target state.

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"hypeman/internal/instances/state"
)

// ForkRef names one fork of a Template.
type ForkRef struct {
	ID   string
	Name string
}

// TemplateInUseError refuses an action on a Template that still has forks.
// It unwraps to a *TransitionError (so callers that map state conflicts see
// one: the API answers 409 invalid_state) and its message names the forks.
type TemplateInUseError struct {
	Action       Action
	TemplateID   string
	TemplateName string
	Forks        []ForkRef
}

func (e *TemplateInUseError) Error() string {
	names := make([]string, len(e.Forks))
	for i, f := range e.Forks {
		names[i] = fmt.Sprintf("%s (%s)", f.Name, f.ID)
	}
	todo := "delete them first"
	switch e.Action {
	case ActionRestore, ActionStart:
		todo = "delete them first; a template without forks is un-promoted and restored on request"
	case ActionDemote:
		todo = "delete them first, then demote it"
	}
	return fmt.Sprintf("cannot %s template %s: %d fork(s) of it exist: %s; %s",
		e.Action, e.TemplateName, len(e.Forks), strings.Join(names, ", "), todo)
}

func (e *TemplateInUseError) Unwrap() error {
	return &TransitionError{Action: e.Action, State: state.Template, Allowed: []Action{ActionFork}}
}

// templateOr is the state of a saved instance that is not running: Template
// when promoted, else fallback (Standby).
func templateOr(meta Metadata, fallback state.State) state.State {
	if meta.IsTemplate {
		return state.Template
	}
	return fallback
}

// PromoteTemplate makes a Standby instance a Template. Promoting a Template
// again returns it unchanged.
func (m *Manager) PromoteTemplate(ctx context.Context, ref string) (_ *Instance, err error) {
	defer m.observe("promote_template", time.Now(), &err)
	e, st, unlock, err := m.lockTemplateOp(ctx, ref, ActionPromote)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if st == state.Template {
		return m.view(ctx, e)
	}
	if err := checkTransition(ActionPromote, st); err != nil {
		return nil, err
	}
	e.mu.Lock()
	meta := e.meta
	e.mu.Unlock()
	// A template exists to be forked: refuse one that could not be.
	if err := refuseWritableVolumes(meta, "fork"); err != nil {
		return nil, fmt.Errorf("promote-template: %w", err)
	}
	forks := len(m.forksOf(meta.ID))
	e.mu.Lock()
	e.meta.IsTemplate, e.meta.ForkCount = true, forks
	err = m.persist(e)
	if err != nil {
		e.meta.IsTemplate, e.meta.ForkCount = false, 0
	}
	e.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("promote-template: %w", err)
	}
	m.logf(meta.ID, "promoted to template")
	m.publish(meta.ID, state.Standby, state.Template, "promoted to template")
	return m.view(ctx, e)
}

// DemoteTemplate makes a Template without forks Standby again. Demoting a
// Standby instance returns it unchanged.
func (m *Manager) DemoteTemplate(ctx context.Context, ref string) (_ *Instance, err error) {
	defer m.observe("demote_template", time.Now(), &err)
	e, st, unlock, err := m.lockTemplateOp(ctx, ref, ActionDemote)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if st == state.Standby {
		return m.view(ctx, e)
	}
	if err := m.checkAction(e, ActionDemote, st); err != nil {
		return nil, err
	}
	if err := m.unpromote(e, "demoted from template"); err != nil {
		return nil, err
	}
	return m.view(ctx, e)
}

// lockTemplateOp resolves ref, takes its op lock (unlock releases it) and
// returns its state; an instance whose metadata is unreadable is refused.
func (m *Manager) lockTemplateOp(ctx context.Context, ref string, a Action) (*entry, state.State, func(), error) {
	e, err := m.resolve(ref)
	if err != nil {
		return nil, "", nil, err
	}
	e.op.Lock()
	if err := m.refuseBroken(e, a); err != nil {
		e.op.Unlock()
		return nil, "", nil, err
	}
	return e, m.currentState(ctx, e), e.op.Unlock, nil
}

// checkAction is checkTransition for an instance that may be a Template: an
// action a Template refuses while it has forks gets a TemplateInUseError
// naming them (caller holds e.op).
func (m *Manager) checkAction(e *entry, a Action, st state.State) error {
	if st == state.Template && a != ActionFork && a != ActionPromote {
		e.mu.Lock()
		id, name := e.meta.ID, e.meta.Name
		e.mu.Unlock()
		if forks := m.forksOf(id); len(forks) > 0 {
			return &TemplateInUseError{Action: a, TemplateID: id, TemplateName: name, Forks: forks}
		}
	}
	return checkTransition(a, st)
}

// wakeTemplate prepares a restore: a Template with forks is refused, one
// without is un-promoted (it is Standby afterwards). Returns the state the
// restore proceeds from (caller holds e.op).
func (m *Manager) wakeTemplate(e *entry, st state.State) (state.State, error) {
	if st != state.Template {
		return st, nil
	}
	if err := m.checkAction(e, ActionRestore, st); err != nil {
		return st, err
	}
	if err := m.unpromote(e, "un-promoted for a restore"); err != nil {
		return st, err
	}
	return state.Standby, nil
}

// unpromote clears the template mark (caller holds e.op, checked there are
// no forks).
func (m *Manager) unpromote(e *entry, why string) error {
	e.mu.Lock()
	id := e.meta.ID
	e.meta.IsTemplate, e.meta.ForkCount = false, 0
	err := m.persist(e)
	if err != nil {
		e.meta.IsTemplate = true
	}
	e.mu.Unlock()
	if err != nil {
		return fmt.Errorf("%s: %w", ActionDemote, err)
	}
	m.logf(id, "%s", why)
	m.publish(id, state.Template, state.Standby, why)
	return nil
}

// forksOf lists the registered instances forked from the Template id,
// oldest first.
func (m *Manager) forksOf(id string) []ForkRef {
	type fork struct {
		ForkRef
		created time.Time
	}
	var out []fork
	for _, e := range m.allEntries() {
		e.mu.Lock()
		if e.meta.ForkOfTemplate == id && !e.deleted {
			out = append(out, fork{ForkRef{ID: e.meta.ID, Name: e.meta.Name}, e.meta.CreatedAt})
		}
		e.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].created.Equal(out[j].created) {
			return out[i].ID < out[j].ID
		}
		return out[i].created.Before(out[j].created)
	})
	refs := make([]ForkRef, len(out))
	for i, f := range out {
		refs[i] = f.ForkRef
	}
	return refs
}

// syncForkCount sets the Template's ForkCount from its registered forks and
// persists it when it changed. Called after a fork of it is registered or
// removed; the lock taken is the Template's metadata lock only, so callers
// may hold the fork's (and the Template's) op lock.
func (m *Manager) syncForkCount(templateID string) {
	if templateID == "" {
		return
	}
	m.mu.Lock()
	t := m.entries[templateID]
	m.mu.Unlock()
	if t == nil {
		return
	}
	n := len(m.forksOf(templateID))
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.meta.IsTemplate || t.meta.ForkCount == n {
		return
	}
	t.meta.ForkCount = n
	if err := m.persist(t); err != nil {
		// Memory holds the right count; load recounts it from the forks.
		m.log.Warn("persist template fork count", "id", templateID, "err", err)
	}
}

// forkGone is called once a fork has been removed from the registry (deleted
// or failed): its Template's count follows.
func (m *Manager) forkGone(e *entry) {
	e.mu.Lock()
	t := e.meta.ForkOfTemplate
	e.mu.Unlock()
	m.syncForkCount(t)
}

// recountForks runs at load, after half-made forks were discarded: every
// Template's count is what its surviving forks say, and a fork naming an
// instance that is no longer a Template forgets it.
func (m *Manager) recountForks() {
	for _, e := range m.allEntries() {
		e.mu.Lock()
		tid, id := e.meta.ForkOfTemplate, e.meta.ID
		e.mu.Unlock()
		if tid == "" {
			continue
		}
		m.mu.Lock()
		t := m.entries[tid]
		m.mu.Unlock()
		ok := false
		if t != nil {
			t.mu.Lock()
			ok = t.meta.IsTemplate || t.broken != ""
			t.mu.Unlock()
		}
		if ok {
			continue
		}
		e.mu.Lock()
		e.meta.ForkOfTemplate = ""
		if err := m.persist(e); err != nil {
			m.log.Warn("clear the template of a fork", "id", id, "err", err)
		}
		e.mu.Unlock()
		m.log.Info("fork's template is gone or no longer a template; forgetting it", "id", id, "template", tid)
	}
	for _, e := range m.allEntries() {
		e.mu.Lock()
		id, isT, was := e.meta.ID, e.meta.IsTemplate, e.meta.ForkCount
		e.mu.Unlock()
		if !isT {
			continue
		}
		m.syncForkCount(id)
		e.mu.Lock()
		now := e.meta.ForkCount
		e.mu.Unlock()
		if now != was {
			m.log.Warn("template fork count corrected from its forks", "id", id, "was", was, "now", now)
		}
	}
}
