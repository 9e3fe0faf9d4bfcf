package relay

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"
)

// ErrOriginPattern is returned by NewServer for an allowed-origin pattern
// that would let any web page connect.
var ErrOriginPattern = errors.New("relay: allowed origin matches any site")

// checkOrigin decides whether a browser page may open a WebSocket here,
// as the WebSocket library would (the library refuses cross-origin
// upgrades unless allowed), but says why: a refused page only sees a
// failed connection, so the relay logs the origin and the setting that
// would allow it, and answers 403 with the same text.
//
// Requests without an Origin header (not from a browser) and pages served
// by the relay's own host pass. Others must match one of allowed (see
// originAllowed).
func checkOrigin(w http.ResponseWriter, r *http.Request, allowed []string, log *slog.Logger) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err == nil && u.Host != "" {
		if strings.EqualFold(r.Host, u.Host) {
			return true
		}
		if originAllowed(u, allowed) {
			return true
		}
	}
	msg := "origin " + origin + " is not allowed to connect to " + r.URL.Path + "; add it to the relay's allowed origins (ferry relay --allow-origin)"
	if n, ok := originWarnings.allow(log, origin, time.Now()); ok {
		log.Warn("refused a cross-origin WebSocket", "origin", origin, "path", r.URL.Path, "remote", r.RemoteAddr, "allowed", allowed,
			"refused_since_last_warning", n)
	}
	http.Error(w, msg, http.StatusForbidden)
	return false
}

// originWarnings bounds the refused-origin warnings: a refused page's
// WebSocket client retries every second or so, per open tab, and each
// retry would log the same warning. One per logger and origin a minute
// says it; the next one counts the refusals in between. One per process,
// not per Server, so checkOrigin's callers need nothing more than a
// logger.
var originWarnings = &warnLimiter{every: time.Minute, last: map[warnKey]warnState{}}

type warnKey struct {
	log    *slog.Logger
	origin string
}

type warnState struct {
	at         time.Time
	suppressed int
}

// warnLimiter allows one warning per key per interval.
type warnLimiter struct {
	every time.Duration

	mu   sync.Mutex
	last map[warnKey]warnState
}

// maxWarnKeys bounds the limiter's memory: Origin headers are chosen by
// whoever connects.
const maxWarnKeys = 1024

// allow reports whether to warn about origin now and, if so, how many
// refusals went unlogged since the last warning.
func (l *warnLimiter) allow(log *slog.Logger, origin string, now time.Time) (suppressed int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := warnKey{log, origin}
	st, seen := l.last[k]
	if seen && now.Sub(st.at) < l.every {
		st.suppressed++
		l.last[k] = st
		return 0, false
	}
	if !seen && len(l.last) >= maxWarnKeys {
		clear(l.last) // forgets who was warned about: at worst, warns again
	}
	l.last[k] = warnState{at: now}
	return st.suppressed, true
}

// originAllowed reports whether the page origin u matches a pattern of
// allowed: a host pattern ("app.example.com", "*.example.com",
// "localhost:5173") or, with "://", a scheme and host
// ("http://app.example.com"), matched with path.Match, case-insensitively.
//
// A host pattern admits https pages only, and http pages on a loopback
// host: the relay accepts credentials from a cookie, and a page served
// over plain http can be rewritten by anyone on its network path, who
// could then open a WebSocket with the visitor's cookie. Allowing http
// elsewhere takes a pattern that says "http://".
func originAllowed(u *url.URL, allowed []string) bool {
	scheme := strings.ToLower(u.Scheme)
	host := strings.ToLower(u.Host)
	for _, p := range allowed {
		p = strings.ToLower(p)
		target := host
		if strings.Contains(p, "://") {
			target = scheme + "://" + host
		} else if scheme != "https" && !(scheme == "http" && loopbackHost(u.Hostname())) {
			continue
		}
		if ok, _ := path.Match(p, target); ok {
			return true
		}
	}
	return false
}

// loopbackHost reports whether h names this machine (where development
// servers run).
func loopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// checkOriginPatterns refuses patterns that match any site ("*", "*.*",
// "https://*"): with them, a page on any site a visitor opens could sync
// as that visitor, since browsers send the relay's cookie along with a
// cross-site WebSocket request (cross-site WebSocket hijacking). Each
// pattern must also be well-formed for path.Match.
func checkOriginPatterns(allowed []string) error {
	// Sites no configuration means to allow, on a port and without.
	probes := []string{"ferry-origin-probe.invalid", "ferry-origin-probe.invalid:8443"}
	for _, p := range allowed {
		lp := strings.ToLower(p)
		if _, err := path.Match(lp, ""); err != nil {
			return fmt.Errorf("relay: allowed origin %q: %w", p, err)
		}
		for _, h := range probes {
			for _, target := range []string{h, "https://" + h, "http://" + h} {
				if ok, _ := path.Match(lp, target); ok {
					return fmt.Errorf("%w: %q would let any web page connect with its visitors' credentials; list the origins of your pages instead", ErrOriginPattern, p)
				}
			}
		}
	}
	return nil
}
