package relay

import "time"

// SetGroupWait sets how long a flusher waits for pushes merging (see
// gather).
func (s *Server) SetGroupWait(d time.Duration) { s.groupWait = d }

// SetGatherHook sets the hook c's committer calls when a flusher starts
// to wait for pushes merging. It is called with the committer's lock
// held, and must not block.
func (s *Server) SetGatherHook(c Coll, f func()) {
	cm := s.committer(c)
	cm.mu.Lock()
	cm.gatherHook = f
	cm.mu.Unlock()
}
