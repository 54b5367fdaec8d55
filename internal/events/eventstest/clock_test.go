package eventstest

import (
	"context"
	"testing"
	"time"
)

func TestClockFiresTimersOnAdvanceOnly(t *testing.T) {
	start := time.Unix(1000, 0)
	c := NewClock(start)
	a := c.NewTimer(2 * time.Second)
	b := c.NewTimer(time.Second)
	stopped := c.NewTimer(time.Second)
	if !stopped.Stop() || stopped.Stop() {
		t.Fatal("Stop should report true once, then false")
	}
	if c.Timers() != 2 {
		t.Fatalf("Timers() = %d, want 2", c.Timers())
	}
	c.Advance(999 * time.Millisecond)
	select {
	case <-a.C():
		t.Fatal("fired early")
	case <-b.C():
		t.Fatal("fired early")
	default:
	}
	c.Advance(time.Millisecond)
	if at := <-b.C(); !at.Equal(start.Add(time.Second)) {
		t.Fatalf("b fired with %v", at)
	}
	if b.Stop() {
		t.Fatal("Stop after firing should report false")
	}
	c.Advance(time.Hour)
	if at := <-a.C(); !at.Equal(start.Add(2 * time.Second)) {
		t.Fatalf("a fired with %v", at)
	}
	select {
	case <-stopped.C():
		t.Fatal("stopped timer fired")
	default:
	}
	if !c.Now().Equal(start.Add(time.Hour+time.Second)) || c.Timers() != 0 {
		t.Fatalf("now %v timers %d", c.Now(), c.Timers())
	}
	if z := c.NewTimer(0); len(z.C()) != 1 {
		t.Fatal("zero-duration timer should fire at once")
	}
}

func TestWaitTimers(t *testing.T) {
	c := NewClock(time.Unix(0, 0))
	done := make(chan error, 1)
	go func() { done <- c.WaitTimers(context.Background(), 2) }()
	c.NewTimer(time.Second)
	c.NewTimer(time.Second)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.WaitTimers(ctx, 3); err == nil {
		t.Fatal("WaitTimers ignored a cancelled context")
	}
}
