package crdt

// hunk replaces old[pos:pos+del] with new[at:at+ins].
type hunk struct {
	pos, del int // in the old sequence
	at, ins  int // in the new sequence
}

// Bounds on diffSeq's work (about n+m steps per edit) and memory (the
// square of the edit count); past them, the whole differing middle becomes
// one hunk, which is still correct, only coarser.
const (
	maxDiffEdits = 512
	maxDiffCost  = 1 << 20
)

// diffSeq returns the hunks that turn a sequence of length n into one of
// length m, where eq(i, j) reports whether old[i] equals new[j]. It keeps a
// longest common subsequence (Myers' O((n+m)d) algorithm), so that writing a
// whole new value touches only what changed and concurrent edits to the
// untouched parts survive the merge. Hunks are in increasing order and do
// not touch each other.
func diffSeq(n, m int, eq func(i, j int) bool) []hunk {
	// Trim the common prefix and suffix: the usual edit is small.
	pre := 0
	for pre < n && pre < m && eq(pre, pre) {
		pre++
	}
	suf := 0
	for suf < n-pre && suf < m-pre && eq(n-1-suf, m-1-suf) {
		suf++
	}
	a, b := n-pre-suf, m-pre-suf
	if a == 0 && b == 0 {
		return nil
	}
	whole := []hunk{{pos: pre, del: a, at: pre, ins: b}}
	if a == 0 || b == 0 {
		return whole
	}
	same := func(x, y int) bool { return eq(pre+x, pre+y) }

	// Forward pass. v[off+k] is the furthest x reached on diagonal k = x-y;
	// trace[d] is a copy of v[off-d : off+d+1] after round d.
	maxD := min(a+b, maxDiffEdits)
	off := maxD + 1
	v := make([]int, 2*off+1)
	var trace [][]int
	cost := 0
	for d := 0; d <= maxD; d++ {
		for k := -d; k <= d; k += 2 {
			var x int
			if k == -d || (k != d && v[off+k-1] < v[off+k+1]) {
				x = v[off+k+1] // down: insert new[y]
			} else {
				x = v[off+k-1] + 1 // right: delete old[x]
			}
			y := x - k
			for x < a && y < b && same(x, y) {
				x, y = x+1, y+1
				cost++
			}
			v[off+k] = x
			if x >= a && y >= b {
				return shiftHunks(backtrack(trace, d, a, b), pre)
			}
		}
		cost += d + 1
		if cost > maxDiffCost {
			break
		}
		trace = append(trace, append([]int(nil), v[off-d:off+d+1]...))
	}
	return whole
}

// backtrack walks from (a, b), reached in round dEnd, back through the
// frontiers of the earlier rounds and returns the edit path as hunks, in
// increasing order.
func backtrack(trace [][]int, dEnd, a, b int) []hunk {
	var rev []hunk // in decreasing order
	x, y := a, b
	for d := dEnd; d > 0; d-- {
		prev := trace[d-1] // diagonals -(d-1) .. d-1
		at := func(k int) int { return prev[k+d-1] }
		k := x - y
		pk := k - 1 // came right from diagonal k-1: a deletion
		if k == -d || (k != d && at(k-1) < at(k+1)) {
			pk = k + 1 // came down from diagonal k+1: an insertion
		}
		px := at(pk)
		py := px - pk
		// Back along the diagonal (equal elements) to just after the edit.
		for x > px && y > py {
			x, y = x-1, y-1
		}
		del, ins := 1, 0
		if pk == k+1 {
			del, ins = 0, 1
		}
		// Merge with the hunk right after this edit, if they touch.
		if n := len(rev); n > 0 && rev[n-1].pos == px+del && rev[n-1].at == py+ins {
			rev[n-1].pos, rev[n-1].at = px, py
			rev[n-1].del += del
			rev[n-1].ins += ins
		} else {
			rev = append(rev, hunk{pos: px, del: del, at: py, ins: ins})
		}
		x, y = px, py
	}
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	return rev
}

func shiftHunks(hs []hunk, by int) []hunk {
	for i := range hs {
		hs[i].pos += by
		hs[i].at += by
	}
	return hs
}
