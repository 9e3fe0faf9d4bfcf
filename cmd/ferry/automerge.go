package main

import (
	"net/url"
	"slices"
)

// devOrigins are the page origins `ferry relay --dev` allows besides those
// configured: any port on this machine, where development servers run.
var devOrigins = []string{"localhost:*", "127.0.0.1:*", "[::1]:*"}

// allowedOrigins merges the configured origins, the --allow-origin flag's
// and, in development mode, devOrigins.
func allowedOrigins(configured []string, flag string, dev bool) []string {
	out := slices.Clone(configured)
	out = append(out, splitList(flag)...)
	if dev {
		out = append(out, devOrigins...)
	}
	return out
}

// automergeURL is the URL an automerge-repo app gives its WebSocket
// adapter to sync collection coll through the relay at addr (scheme ws or
// wss).
func automergeURL(scheme, addr, apiKey, token, coll string) string {
	q := url.Values{"api_key": {apiKey}, "token": {token}}
	return scheme + "://" + addr + "/automerge/" + url.PathEscape(coll) + "?" + q.Encode()
}
