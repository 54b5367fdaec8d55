package pending

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// signaled reports whether a wake-up is queued, without waiting: Add sends
// (or finds one already queued) before it returns.
func signaled(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func TestSetCollapsesRepeatsIntoOneWakeup(t *testing.T) {
	s := NewSet()
	if signaled(s.C()) {
		t.Fatal("new set is signaled")
	}
	if got := s.Take(); len(got) != 0 {
		t.Fatalf("new set Take = %v, want none", got)
	}
	s.Add("a")
	s.Add("b")
	s.Add("a") // the channel is full: must not block
	if !signaled(s.C()) {
		t.Fatal("no wake-up after Add")
	}
	if signaled(s.C()) {
		t.Fatal("three Adds queued more than one wake-up")
	}
	got := s.Take()
	slices.Sort(got)
	if !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("Take = %v, want [a b]", got)
	}
	if got := s.Take(); len(got) != 0 {
		t.Fatalf("second Take = %v, want none", got)
	}
}

func TestSetAddAfterTakeSignalsAgain(t *testing.T) {
	s := NewSet()
	s.Add("a")
	<-s.C()
	s.Take()
	s.Add("b")
	if !signaled(s.C()) {
		t.Fatal("no wake-up for an Add after Take")
	}
	if got := s.Take(); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("Take = %v, want [b]", got)
	}
}

// A loop that drains after every wake-up sees every ID, however Adds from
// many goroutines interleave with its receives.
func TestSetLosesNoIDUnderConcurrency(t *testing.T) {
	const writers, perWriter = 8, 200
	s := NewSet()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				s.Add(fmt.Sprintf("%d-%d", w, i))
			}
		}()
	}
	seen := map[string]bool{}
	deadline := time.After(30 * time.Second)
	for len(seen) < writers*perWriter {
		select {
		case <-s.C():
			for _, id := range s.Take() {
				seen[id] = true
			}
		case <-deadline:
			t.Fatalf("saw %d of %d IDs: a wake-up was lost", len(seen), writers*perWriter)
		}
	}
	wg.Wait()
}

func TestMapUpdateSeesCurrentValue(t *testing.T) {
	type req struct {
		eval   bool
		detail string
	}
	m := NewMap[req]()
	m.Update("a", func(r req) req {
		if r != (req{}) {
			t.Errorf("absent id: f got %+v, want the zero value", r)
		}
		r.detail = "unhealthy"
		return r
	})
	m.Update("a", func(r req) req { r.eval = true; return r })
	m.Update("b", func(r req) req { r.eval = true; return r })
	if !signaled(m.C()) {
		t.Fatal("no wake-up after Update")
	}
	got := m.Take()
	want := map[string]req{"a": {eval: true, detail: "unhealthy"}, "b": {eval: true}}
	if len(got) != len(want) || got["a"] != want["a"] || got["b"] != want["b"] {
		t.Fatalf("Take = %+v, want %+v", got, want)
	}
	if got := m.Take(); len(got) != 0 {
		t.Fatalf("second Take = %+v, want none", got)
	}
}
