package crdt

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// applyHunks applies hs to old, taking inserted elements from new.
func applyHunks(old, new []byte, hs []hunk) []byte {
	out := slices.Clone(old)
	for i := len(hs) - 1; i >= 0; i-- {
		h := hs[i]
		out = slices.Replace(out, h.pos, h.pos+h.del, new[h.at:h.at+h.ins]...)
	}
	return out
}

// lcs is the length of a longest common subsequence, by dynamic programming.
func lcs(a, b []byte) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for i := range a {
		for j := range b {
			if a[i] == b[j] {
				cur[j+1] = prev[j] + 1
			} else {
				cur[j+1] = max(cur[j], prev[j+1])
			}
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func TestDiffSeq(t *testing.T) {
	cases := [][2]string{
		{"", ""}, {"", "abc"}, {"abc", ""}, {"abc", "abc"},
		{"the quick fox", "The quick fox jumps"},
		{"abcabba", "cbabac"},
		{"aaaa", "aa"}, {"ab", "ba"}, {"x", "y"},
	}
	rng := rand.New(rand.NewPCG(7, 8))
	for range 2000 {
		gen := func() string {
			b := make([]byte, rng.IntN(24))
			for i := range b {
				b[i] = "abc"[rng.IntN(3)]
			}
			return string(b)
		}
		cases = append(cases, [2]string{gen(), gen()})
	}
	for _, c := range cases {
		a, b := []byte(c[0]), []byte(c[1])
		hs := diffSeq(len(a), len(b), func(i, j int) bool { return a[i] == b[j] })
		if got := applyHunks(a, b, hs); string(got) != c[1] {
			t.Fatalf("diff %q -> %q: hunks %+v give %q", c[0], c[1], hs, got)
		}
		edits := 0
		for i, h := range hs {
			edits += h.del + h.ins
			if h.del+h.ins == 0 {
				t.Fatalf("diff %q -> %q: empty hunk in %+v", c[0], c[1], hs)
			}
			if i > 0 && (h.pos <= hs[i-1].pos+hs[i-1].del || h.at <= hs[i-1].at+hs[i-1].ins) {
				t.Fatalf("diff %q -> %q: hunks out of order or touching: %+v", c[0], c[1], hs)
			}
		}
		if want := len(a) + len(b) - 2*lcs(a, b); edits != want {
			t.Fatalf("diff %q -> %q: %d edits, minimal is %d (%+v)", c[0], c[1], edits, want, hs)
		}
	}
}

// Past the work bound, the diff falls back to one hunk over the differing
// middle, which is still correct.
func TestDiffSeqBounded(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	a := make([]byte, 20000)
	b := make([]byte, 20000)
	for i := range a {
		a[i], b[i] = byte(rng.IntN(4)), byte(rng.IntN(4))
	}
	a[0], b[0] = 9, 9
	hs := diffSeq(len(a), len(b), func(i, j int) bool { return a[i] == b[j] })
	if got := applyHunks(a, b, hs); !slices.Equal(got, b) {
		t.Fatal("bounded diff is wrong")
	}
	if len(hs) != 1 || hs[0].pos != 1 {
		t.Fatalf("want one hunk after the common prefix, got %d hunks", len(hs))
	}
}
