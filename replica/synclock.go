package replica

import (
	"context"
	"sync"
)

// collLocks serializes, per collection, everything this replica exchanges
// with a relay about it: a sync of any profile and type, and a live
// session's pushes and applies. Interleaved, they corrupt what they share:
// a refresh from the relay that read the relay's records before a
// concurrent push was stored would purge the pushed record; two leased
// syncs of one replica would fence each other out, since the relay knows
// them as one holder.
//
// Lock order: a profile's lock (scheduler.lockProfile) before collection
// locks; a collection lock is never held while waiting for a profile's.
type collLocks struct {
	mu   sync.Mutex
	sems map[string]chan struct{}

	// waiting, if set, is called when a sync starts waiting for another
	// (tests use it to know the wait has begun).
	waiting func(coll string)
}

// lock takes coll's lock, waiting while another exchange holds it, or
// until ctx ends.
func (l *collLocks) lock(ctx context.Context, coll string) (unlock func(), err error) {
	l.mu.Lock()
	if l.sems == nil {
		l.sems = map[string]chan struct{}{}
	}
	sem := l.sems[coll]
	if sem == nil {
		sem = make(chan struct{}, 1)
		l.sems[coll] = sem
	}
	waiting := l.waiting
	l.mu.Unlock()
	unlock = func() { <-sem }
	select {
	case sem <- struct{}{}:
		return unlock, nil
	default:
	}
	if waiting != nil {
		waiting(coll)
	}
	select {
	case sem <- struct{}{}:
		return unlock, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
