package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/MicahParks/jwkset"
)

const (
	// jwksFetchTimeout bounds one fetch of a key set, so that a hung
	// identity provider delays a hello by at most this long.
	jwksFetchTimeout = 10 * time.Second
	// maxJWKSBytes bounds a key set's size: real ones are a few KB.
	maxJWKSBytes = 1 << 20
)

// jwksCache holds one identity provider's key set, fetched from its URL
// at start, every refresh interval, and when a token names a kid the set
// lacks. A fetch that fails, or yields no usable key, leaves the last good
// set in place. It is safe for concurrent use; close stops its goroutine
// and waits for it.
type jwksCache struct {
	url     string
	refresh time.Duration
	algs    []string // configured algorithms, or nil for every public one
	client  *http.Client
	now     func() time.Time
	log     *slog.Logger

	fetchMu sync.Mutex // one fetch at a time; held across the request
	lastTry time.Time  // when the last fetch began (under fetchMu)

	mu     sync.Mutex
	keys   []verifier // the last good set
	lastOK bool       // whether the last fetch succeeded

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

// newJWKSCache fetches the set once, then refreshes it in the background
// until close. A first fetch that fails is logged, not returned: the
// relay starts, and tokens of this set are refused until a fetch works.
func newJWKSCache(k Key, client *http.Client, now func() time.Time, log *slog.Logger) *jwksCache {
	c := &jwksCache{url: k.JWKSURL, refresh: k.Refresh, algs: k.Algorithms, client: client, now: now, log: log, done: make(chan struct{})}
	if c.refresh == 0 {
		c.refresh = defaultJWKSRefresh
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.fetch(false)
	go c.run()
	return c
}

// cacheID names what makes two caches interchangeable across reloads.
func (k Key) cacheID() string {
	r := k.Refresh
	if r == 0 {
		r = defaultJWKSRefresh
	}
	return k.JWKSURL + " " + r.String() + " " + strings.Join(k.Algorithms, ",")
}

func (c *jwksCache) run() {
	defer close(c.done)
	for {
		c.mu.Lock()
		wait := c.refresh
		if !c.lastOK {
			// Down (at start or since): try again soon, not in an hour.
			wait = min(wait, JWKSMinRefresh)
		}
		c.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-c.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		c.fetch(false)
	}
}

func (c *jwksCache) close() {
	c.cancel()
	<-c.done
}

// fetch gets the set and, if it holds usable keys, replaces the cached
// one. With limited, it does nothing if a fetch began less than
// JWKSMinRefresh ago: unknown kids cannot make the relay hammer the
// provider.
func (c *jwksCache) fetch(limited bool) {
	c.fetchMu.Lock()
	defer c.fetchMu.Unlock()
	now := c.now()
	if limited && !c.lastTry.IsZero() && now.Sub(c.lastTry) < JWKSMinRefresh {
		return
	}
	c.lastTry = now
	keys, skipped, err := c.get()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastOK = err == nil
	if err != nil {
		c.log.Warn("JWKS fetch failed; verifying with the last good set", "url", c.url, "err", err, "keys", len(c.keys))
		return
	}
	if len(skipped) > 0 {
		c.log.Info("JWKS keys skipped", "url", c.url, "skipped", strings.Join(skipped, "; "))
	}
	c.keys = keys
}

// get fetches and parses the set. Keys the relay cannot use (symmetric,
// encryption-only, unsupported, too weak) are skipped and described; a
// set with none left is an error.
func (c *jwksCache) get() ([]verifier, []string, error) {
	ctx, cancel := context.WithTimeout(c.ctx, jwksFetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("HTTP status %s", resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, nil, err
	}
	if len(b) > maxJWKSBytes {
		return nil, nil, fmt.Errorf("key set larger than %d bytes", maxJWKSBytes)
	}
	var set jwkset.JWKSMarshal
	if err := json.Unmarshal(b, &set); err != nil {
		return nil, nil, fmt.Errorf("not a JSON Web Key Set: %w", err)
	}
	var keys []verifier
	var skipped []string
	for i, m := range set.Keys {
		v, err := c.parse(m)
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("key %d (kid %q): %v", i, m.KID, err))
			continue
		}
		keys = append(keys, *v)
	}
	if len(keys) == 0 {
		return nil, skipped, fmt.Errorf("no usable signing key in the set (%d keys: %s)", len(set.Keys), strings.Join(skipped, "; "))
	}
	return keys, skipped, nil
}

// parse turns one JWK into a verifier: a public signing key, its
// algorithms narrowed by the JWK's own "alg" and the configured ones.
func (c *jwksCache) parse(m jwkset.JWKMarshal) (*verifier, error) {
	if m.USE != "" && m.USE != jwkset.UseSig {
		return nil, fmt.Errorf("use %q is not sig", m.USE)
	}
	if m.KTY == jwkset.KtyOct {
		return nil, errors.New("a symmetric key has no place in a published set")
	}
	m.D, m.P, m.Q, m.DP, m.DQ, m.QI, m.OTH = "", "", "", "", "", "", nil // public parts only
	jwk, err := jwkset.NewJWKFromMarshal(m, jwkset.JWKMarshalOptions{}, jwkset.JWKValidateOptions{})
	if err != nil {
		return nil, err
	}
	configured := c.algs
	if alg := string(m.ALG); alg != "" {
		if len(configured) > 0 && !slices.Contains(configured, alg) {
			return nil, fmt.Errorf("alg %s is not among the configured algorithms", alg)
		}
		configured = []string{alg}
	}
	return publicVerifier(m.KID, jwk.Key(), configured)
}

// candidates returns the set's keys that may verify a token with this kid
// (any key when kid is empty) and alg. An unknown kid prompts a fetch,
// rate-limited, since the provider may have added a key.
func (c *jwksCache) candidates(kid, alg string) []verifier {
	vs, known := c.match(kid, alg)
	if known || kid == "" {
		return vs
	}
	// Keys without a kid may still verify it, but the provider may just
	// as well have added the key it names.
	c.fetch(true)
	vs, _ = c.match(kid, alg)
	return vs
}

// match returns the cached keys for kid and alg (a key the set gives no
// kid may verify any token), and whether kid names a key of the set.
func (c *jwksCache) match(kid, alg string) ([]verifier, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var vs []verifier
	known := false
	for _, v := range c.keys {
		if kid != "" && v.kid != "" && v.kid != kid {
			continue
		}
		known = known || v.kid == kid
		if slices.Contains(v.algs, alg) {
			vs = append(vs, v)
		}
	}
	return vs, known
}

// holds reports whether the current set has the key fp.
func (c *jwksCache) holds(fp [32]byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.ContainsFunc(c.keys, func(v verifier) bool { return v.fp == fp })
}
