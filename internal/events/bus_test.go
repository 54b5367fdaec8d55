package events_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"hypeman/internal/events"
	"hypeman/internal/events/eventstest"
	"hypeman/internal/instances/state"
)

func TestEventJSON(t *testing.T) {
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	ev := events.StateChange("i1", state.Initializing, state.Running, "boot marker")
	ev.ID, ev.At = 7, at
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"id":7,"type":"state_change","instance_id":"i1","from":"Initializing","to":"Running","at":"2025-01-02T03:04:05Z","reason":"boot marker"}`
	if string(b) != want {
		t.Fatalf("json:\n got %s\nwant %s", b, want)
	}
}

func TestPublishStampsIDAndTime(t *testing.T) {
	clk := eventstest.NewClock(time.Unix(1_700_000_000, 0))
	b := events.New(events.Options{Clock: clk})
	defer b.Close()
	e1 := publish(t, b, events.StateChange("a", state.Created, state.Initializing, ""))
	e2 := publish(t, b, events.Deleted("a", state.Initializing, "deleted by API"))
	if want := uint64(clk.Now().UnixMicro()); e1.ID != want {
		t.Fatalf("first ID %d, want clock-seeded %d", e1.ID, want)
	}
	if e2.ID != e1.ID+1 || b.LastID() != e2.ID {
		t.Fatalf("IDs not consecutive: %d %d last %d", e1.ID, e2.ID, b.LastID())
	}
	if !e1.At.Equal(clk.Now()) || e2.Type != events.TypeDeleted || e2.To != "" {
		t.Fatalf("bad stamping: %+v %+v", e1, e2)
	}
}

func TestSubscriberSeesOnlyItsInstanceInOrder(t *testing.T) {
	b := events.New(events.Options{FirstID: 1})
	defer b.Close()
	const publishers, perPublisher = 4, 500
	all := b.Subscribe(events.SubscribeOptions{Buffer: publishers * perPublisher, Consumer: "test"})
	defer all.Close()
	subs := make([]*events.Subscription, publishers)
	for p := range subs {
		subs[p] = b.Subscribe(events.SubscribeOptions{InstanceID: fmt.Sprint("i", p), Buffer: perPublisher})
		defer subs[p].Close()
	}
	var wg sync.WaitGroup
	for p := 0; p < publishers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perPublisher {
				if _, err := b.Publish(events.StateChange(fmt.Sprint("i", p), state.Running, state.Paused, "")); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	check := func(name string, s *events.Subscription, n int, inst string) {
		var last uint64
		for i := 0; i < n; i++ {
			ev := <-s.C()
			if ev.ID <= last {
				t.Fatalf("%s: event %d after %d: out of order", name, ev.ID, last)
			}
			if inst != "" && ev.InstanceID != inst {
				t.Fatalf("%s: got event of %s", name, ev.InstanceID)
			}
			last = ev.ID
		}
		select {
		case ev := <-s.C():
			t.Fatalf("%s: unexpected extra event %+v", name, ev)
		default:
		}
		if s.Err() != nil {
			t.Fatalf("%s ended: %v", name, s.Err())
		}
	}
	check("global", all, publishers*perPublisher, "")
	for p, s := range subs {
		check(fmt.Sprint("sub", p), s, perPublisher, fmt.Sprint("i", p))
	}
}

func TestSlowConsumerIsCutOffCountedAndTold(t *testing.T) {
	m := &counters{}
	b := events.New(events.Options{Metrics: m, FirstID: 100})
	defer b.Close()
	slow := b.Subscribe(events.SubscribeOptions{InstanceID: "a", Buffer: 2, Consumer: "slowpoke"})
	fast := b.Subscribe(events.SubscribeOptions{Buffer: 10, Consumer: "fast"})
	defer fast.Close()
	for range 5 {
		publish(t, b, events.StateChange("a", state.Running, state.Paused, ""))
	}
	// The slow consumer still gets what fit in its buffer, in order, then a
	// closed channel and an error naming the first missed event.
	var got []uint64
	for ev := range slow.C() {
		got = append(got, ev.ID)
	}
	if fmt.Sprint(got) != "[100 101]" {
		t.Fatalf("slow consumer got %v, want [100 101]", got)
	}
	err := slow.Err()
	var lag *events.LagError
	if !errors.As(err, &lag) || !errors.Is(err, events.ErrLagged) || lag.MissedID != 102 || lag.Consumer != "slowpoke" {
		t.Fatalf("slow.Err() = %#v, want LagError{slowpoke, 102}", err)
	}
	if pub, drop := m.get("slowpoke", events.DropBufferFull); pub != 5 || drop != 1 {
		t.Fatalf("metrics published=%d dropped=%d, want 5 and 1", pub, drop)
	}
	if _, drop := m.get("fast", events.DropBufferFull); drop != 0 {
		t.Fatalf("fast consumer counted drops: %d", drop)
	}
	if n := b.Subscribers("a"); n != 0 {
		t.Fatalf("lagged subscription still registered (%d)", n)
	}
	if len(fast.C()) != 5 || fast.Err() != nil {
		t.Fatalf("fast consumer affected: %d buffered, err %v", len(fast.C()), fast.Err())
	}
	// Gap-free resume from the history.
	backlog, again, ok := b.SubscribeSince(lag.MissedID-1, events.SubscribeOptions{InstanceID: "a"})
	defer again.Close()
	if !ok || len(backlog) != 3 || backlog[0].ID != 102 || backlog[2].ID != 104 {
		t.Fatalf("resume: ok=%v backlog=%v", ok, backlog)
	}
	publish(t, b, events.StateChange("a", state.Paused, state.Running, ""))
	if ev := <-again.C(); ev.ID != 105 {
		t.Fatalf("live after resume: %d, want 105", ev.ID)
	}
	slow.Close() // idempotent after the bus ended it
	if !errors.Is(slow.Err(), events.ErrLagged) {
		t.Fatalf("Close overwrote the lag error: %v", slow.Err())
	}
}

func TestHistorySince(t *testing.T) {
	clk := eventstest.NewClock(time.Unix(1_700_000_000, 0))
	b := events.New(events.Options{History: 4, Clock: clk})
	defer b.Close()
	first := b.LastID() + 1
	if got, ok := b.Since(first-1, ""); !ok || len(got) != 0 {
		t.Fatalf("empty bus: %v %v", got, ok)
	}
	if _, ok := b.Since(first-1000, ""); ok {
		t.Fatal("ID from a previous daemon (below the seed) reported resumable")
	}
	var ids []uint64
	for i := range 10 {
		inst := "a"
		if i%2 == 1 {
			inst = "b"
		}
		ids = append(ids, publish(t, b, events.StateChange(inst, state.Running, state.Paused, "")).ID)
	}
	// Retained: ids[6..9].
	got, ok := b.Since(ids[6], "")
	if !ok || len(got) != 3 || got[0].ID != ids[7] || got[2].ID != ids[9] {
		t.Fatalf("Since(ids[6]) = %v, %v", got, ok)
	}
	got, ok = b.Since(ids[5], "a") // first retained is ids[6]: no gap
	if !ok || len(got) != 2 || got[0].ID != ids[6] || got[1].ID != ids[8] {
		t.Fatalf("Since(ids[5], a) = %v, %v", got, ok)
	}
	got, ok = b.Since(ids[1], "")
	if ok || len(got) != 4 || got[0].ID != ids[6] {
		t.Fatalf("fell out of history: got %d events ok=%v, want the 4 retained and ok=false", len(got), ok)
	}
	if got, ok = b.Since(ids[9], ""); !ok || len(got) != 0 {
		t.Fatalf("Since(last) = %v, %v", got, ok)
	}
	if _, ok = b.Since(ids[9]+5, ""); ok {
		t.Fatal("future ID reported resumable")
	}
}

func TestClosedBusAndSubscriptionLifecycle(t *testing.T) {
	b := events.New(events.Options{})
	s := b.Subscribe(events.SubscribeOptions{InstanceID: "a"})
	s.Close()
	s.Close()
	if _, open := <-s.C(); open || !errors.Is(s.Err(), events.ErrClosed) {
		t.Fatalf("closed subscription: open=%v err=%v", open, s.Err())
	}
	live := b.Subscribe(events.SubscribeOptions{})
	b.Close()
	b.Close()
	if _, open := <-live.C(); open || !errors.Is(live.Err(), events.ErrBusClosed) {
		t.Fatalf("after Bus.Close: open=%v err=%v", open, live.Err())
	}
	live.Close() // after bus close: no panic, error kept
	if !errors.Is(live.Err(), events.ErrBusClosed) {
		t.Fatalf("err changed to %v", live.Err())
	}
	if _, err := b.Publish(events.StateChange("a", state.Running, state.Stopped, "")); !errors.Is(err, events.ErrBusClosed) {
		t.Fatalf("Publish after Close: %v", err)
	}
	late := b.Subscribe(events.SubscribeOptions{})
	if _, open := <-late.C(); open || !errors.Is(late.Err(), events.ErrBusClosed) {
		t.Fatal("Subscribe after Close should return an ended subscription")
	}
}

// Publishers, subscribers closing themselves, slow subscribers being cut off
// and a final Bus.Close all race; the race detector and the absence of a
// panic ("send on closed channel") are the assertions, plus every
// subscription ending with a reason.
func TestConcurrentPublishSubscribeCloseStress(t *testing.T) {
	b := events.New(events.Options{History: 64})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for p := 0; p < 4; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				_, err := b.Publish(events.StateChange(fmt.Sprint("i", i%3), state.Running, state.Paused, ""))
				if err != nil && !errors.Is(err, events.ErrBusClosed) {
					t.Error(err)
					return
				}
			}
		}()
	}
	var mu sync.Mutex
	var kept []*events.Subscription
	for c := 0; c < 8; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 300; i++ {
				s := b.Subscribe(events.SubscribeOptions{InstanceID: []string{"", "i0", "i1"}[i%3], Buffer: 1 + i%4})
				if i%5 == 0 {
					mu.Lock()
					kept = append(kept, s) // left for Bus.Close (or lag) to end
					mu.Unlock()
					continue
				}
				for j := 0; j < i%3; j++ {
					<-s.C()
				}
				go s.Close() // Close racing the publishers and the reader below
				for range s.C() {
				}
				if s.Err() == nil {
					t.Error("ended subscription has no error")
				}
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	b.Close()
	close(stop)
	wg.Wait()
	for _, s := range kept {
		for range s.C() {
		}
		if err := s.Err(); !errors.Is(err, events.ErrBusClosed) && !errors.Is(err, events.ErrLagged) {
			t.Fatalf("kept subscription ended with %v", err)
		}
	}
}
