package replica

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/ferrysync/ferry/policy"
)

// scheduler runs what syncs in the background: periodic profiles, live
// profiles, and syncs deferred until an allowed network. Every goroutine it
// starts is stopped and waited for by close.
type scheduler struct {
	r *Replica
	// sync runs one sync; tests replace it to drive the scheduler without
	// a relay.
	sync func(ctx context.Context, p *Profile) (*SyncStats, error)
	live func(ctx context.Context, p *Profile)

	mu       sync.Mutex
	locks    map[string]*sync.Mutex        // one sync at a time per profile
	loops    map[string]context.CancelFunc // periodic and live loops
	deferred map[string]bool
	netCh    chan struct{} // closed, and replaced, when the network changes
	runner   bool          // the deferred runner is started
	closed   bool
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

func newScheduler(r *Replica) *scheduler {
	s := &scheduler{r: r, locks: map[string]*sync.Mutex{}, loops: map[string]context.CancelFunc{},
		deferred: map[string]bool{}, netCh: make(chan struct{})}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.sync = r.syncProfile
	s.live = r.runLive
	return s
}

func (s *scheduler) lockProfile(name string) func() {
	s.mu.Lock()
	m := s.locks[name]
	if m == nil {
		m = &sync.Mutex{}
		s.locks[name] = m
	}
	s.mu.Unlock()
	m.Lock()
	return m.Unlock
}

// startAll starts the loops of the stored periodic and live profiles.
func (s *scheduler) startAll() error {
	if s.r.opts.LocalOnly {
		return nil
	}
	ps, err := s.r.Profiles()
	if err != nil {
		return err
	}
	for _, p := range ps {
		s.restart(p)
	}
	return nil
}

// restart stops the profile's loop, if any, and starts the one its mode
// asks for.
func (s *scheduler) restart(p Profile) {
	s.stop(p.Name)
	if s.r.opts.LocalOnly || p.Mode == policy.Manual {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	ctx, cancel := context.WithCancel(s.ctx)
	s.loops[p.Name] = cancel
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		switch p.Mode {
		case policy.Periodic:
			s.periodic(ctx, &p)
		case policy.Live:
			s.live(ctx, &p)
		}
	}()
}

func (s *scheduler) stop(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cancel, ok := s.loops[name]; ok {
		cancel()
		delete(s.loops, name)
	}
	delete(s.deferred, name)
}

// periodic syncs now and then every interval until ctx ends. A sync that
// fails is logged; the next tick tries again.
func (s *scheduler) periodic(ctx context.Context, p *Profile) {
	t := time.NewTicker(p.Interval)
	defer t.Stop()
	for {
		if _, err := s.sync(ctx, p); err != nil && ctx.Err() == nil && !errors.Is(err, ErrDeferred) {
			s.r.log.Warn("periodic sync failed", "profile", p.Name, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// deferSync queues a profile's sync until an allowed network appears.
func (s *scheduler) deferSync(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.deferred[name] = true
	if !s.runner {
		s.runner = true
		s.wg.Add(1)
		go s.runDeferred()
	}
}

// networkChanged wakes everything waiting for a network: the deferred
// runner and every live profile.
func (s *scheduler) networkChanged() {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.netCh)
	s.netCh = make(chan struct{})
}

// networkWait returns a channel closed at the next network change.
func (s *scheduler) networkWait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.netCh
}

// runDeferred runs deferred syncs once their network allows them, when
// SetNetwork reports a change.
func (s *scheduler) runDeferred() {
	defer s.wg.Done()
	for {
		// Take the wake-up before looking, so a change between the look
		// and the wait is not missed.
		wake := s.networkWait()
		for _, name := range s.takeRunnable() {
			p, err := s.r.Profile(name)
			if err != nil {
				continue // removed meanwhile
			}
			if _, err := s.sync(s.ctx, &p); err != nil && s.ctx.Err() == nil && !errors.Is(err, ErrDeferred) {
				s.r.log.Warn("deferred sync failed", "profile", name, "err", err)
			}
		}
		select {
		case <-s.ctx.Done():
			return
		case <-wake:
		}
	}
}

// takeRunnable removes and returns the deferred profiles the current
// network allows.
func (s *scheduler) takeRunnable() []string {
	n := s.r.Network()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for name := range s.deferred {
		p, err := s.r.Profile(name)
		if err != nil || p.Networks.Allows(n) {
			delete(s.deferred, name)
			if err == nil {
				out = append(out, name)
			}
		}
	}
	return out
}

// Deferred lists the profiles whose sync waits for an allowed network.
func (r *Replica) Deferred() []string {
	r.sched.mu.Lock()
	defer r.sched.mu.Unlock()
	var out []string
	for name := range r.sched.deferred {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

func (s *scheduler) close() {
	s.mu.Lock()
	s.closed = true
	s.cancel()
	s.mu.Unlock()
	s.wg.Wait()
}
