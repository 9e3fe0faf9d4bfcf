package relay

import (
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strings"
)

// checkOrigin decides whether a browser page may open a WebSocket here,
// as the WebSocket library would (the library refuses cross-origin
// upgrades unless allowed), but says why: a refused page only sees a
// failed connection, so the relay logs the origin and the setting that
// would allow it, and answers 403 with the same text.
//
// Requests without an Origin header (not from a browser) and pages served
// by the relay's own host pass. Others must match one of allowed: a host
// pattern ("app.example.com", "*.example.com", "localhost:5173") or, with
// "://", a scheme and host ("https://app.example.com"), matched with
// path.Match, case-insensitively.
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
		for _, p := range allowed {
			target := u.Host
			if strings.Contains(p, "://") {
				target = u.Scheme + "://" + u.Host
			}
			if ok, _ := path.Match(strings.ToLower(p), strings.ToLower(target)); ok {
				return true
			}
		}
	}
	msg := "origin " + origin + " is not allowed to connect to " + r.URL.Path + "; add it to the relay's allowed origins (ferry relay --allow-origin)"
	log.Warn("refused a cross-origin WebSocket", "origin", origin, "path", r.URL.Path, "remote", r.RemoteAddr, "allowed", allowed)
	http.Error(w, msg, http.StatusForbidden)
	return false
}
