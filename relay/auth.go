package relay

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// App is a tenant: an application whose devices share data through the
// relay. Apps never see each other's data.
type App struct {
	ID     string `json:"id"`
	APIKey string `json:"api_key"` // presented by every device of the app
	// Secret signs the app's access tokens (HMAC-SHA256). Keep it on the
	// server that issues tokens; devices never need it. An app may have
	// Keys instead, or as well.
	Secret string `json:"secret"`
	// Keys are further keys the app's tokens may be signed with: HMAC
	// secrets, public keys, and identity providers' key sets (JWKS). A
	// token signed with any of them is accepted.
	Keys []Key `json:"-"`
	// Issuer, if set, must be the token's "iss" (an identity provider's
	// issuer URL). Audience must be among its "aud" (default: the app's
	// ID).
	Issuer   string `json:"issuer,omitempty"`
	Audience string `json:"audience,omitempty"`
	// Grants says where a token's read and write rights come from.
	Grants Grants `json:"grants,omitzero"`
	// Leeway is the clock skew tolerated on exp and nbf (0: none), both
	// when a token is presented and when a session re-checks it.
	Leeway time.Duration `json:"-"`
}

// audience is the "aud" the app's tokens must carry.
func (app App) audience() string {
	if app.Audience != "" {
		return app.Audience
	}
	return app.ID
}

// Claims are what an access token grants: who (Subject), until when
// (ExpiresAt), in which app (Audience), and which collections it may read
// and write ("*" means all). A read-only device has a token with no write
// rights.
type Claims struct {
	jwt.RegisteredClaims
	Read  []string `json:"read,omitempty"`
	Write []string `json:"write,omitempty"`

	app   string    // the app that verified it
	key   [32]byte  // fingerprint of the key that verified it
	until time.Time // expiry plus the app's leeway
}

// CanRead reports whether the claims allow reading the collection.
func (c *Claims) CanRead(coll string) bool { return grants(c.Read, coll) || grants(c.Write, coll) }

// CanWrite reports whether the claims allow writing the collection.
func (c *Claims) CanWrite(coll string) bool { return grants(c.Write, coll) }

// ValidUntil is when the token stops being accepted by the relay's clock:
// its expiry plus the app's leeway.
func (c *Claims) ValidUntil() time.Time {
	if c.until.IsZero() && c.ExpiresAt != nil {
		return c.ExpiresAt.Time
	}
	return c.until
}

// Expired reports whether the token has expired at now (allowing the
// app's leeway): a token with an expiry is good while now is before it.
// Auth.Check also refuses a token whose key was removed.
func (c *Claims) Expired(now time.Time) bool {
	return c.ExpiresAt != nil && !now.Before(c.ValidUntil())
}

func grants(list []string, coll string) bool {
	return slices.Contains(list, "*") || slices.Contains(list, coll)
}

var (
	// ErrUnauthenticated means the API key is unknown or the token is not
	// a valid token of that app (bad signature, wrong app, malformed).
	ErrUnauthenticated = errors.New("relay: unauthenticated")
	// ErrTokenExpired means the token was valid but has expired, or (at a
	// re-check) the key that signed it is no longer the app's.
	ErrTokenExpired = errors.New("relay: token expired")
)

// TokenError is a refused API key or token. Check names the check that
// failed, for the relay's log; neither the token nor the key is in it.
// It matches ErrUnauthenticated or ErrTokenExpired with errors.Is.
type TokenError struct {
	App   string // the app whose token it was; "" for an unknown API key
	Check string // see the Check* constants
	Err   error  // the detail
	kind  error  // ErrUnauthenticated or ErrTokenExpired
}

// The checks a TokenError names.
const (
	CheckAPIKey     = "api_key"     // no app has this API key
	CheckMalformed  = "malformed"   // not a JWT
	CheckAlgorithm  = "algorithm"   // an algorithm none of the app's keys allows
	CheckKey        = "key"         // no key of the app for its kid (unknown kid, or JWKS not fetched)
	CheckSignature  = "signature"   // no candidate key verifies it
	CheckExpired    = "expired"     // past exp (plus leeway), or no exp
	CheckNotYet     = "not_before"  // before nbf (minus leeway)
	CheckIssuer     = "issuer"      // wrong iss
	CheckAudience   = "audience"    // wrong aud
	CheckSubject    = "subject"     // no sub
	CheckGrants     = "grants"      // a read or write claim that is not a list of names
	CheckKeyRemoved = "key_removed" // at a re-check: the signing key was removed
)

// Error says why, for the device; the check's name is for the relay's
// log (RefusedCheck), not for the message.
func (e *TokenError) Error() string {
	return fmt.Sprintf("%v: %v", e.kind, e.Err)
}

func (e *TokenError) Unwrap() []error { return []error{e.kind, e.Err} }

func refuse(check string, err error) *TokenError {
	kind := ErrUnauthenticated
	if check == CheckExpired || check == CheckKeyRemoved {
		kind = ErrTokenExpired
	}
	return &TokenError{Check: check, Err: err, kind: kind}
}

// RefusedCheck returns the check a refusal failed (see TokenError), or ""
// if err is not a refusal.
func RefusedCheck(err error) string {
	if err == nil {
		return "" // without the errors.As below, which allocates
	}
	var te *TokenError
	if errors.As(err, &te) {
		return te.Check
	}
	return ""
}

// AuthOptions configure an Auth; nil and zero fields are the defaults.
type AuthOptions struct {
	// Now is the clock Verify checks exp and nbf by, and JWKS fetches are
	// rate-limited by (default time.Now).
	// It is called from every session's goroutine, so it must be safe
	// for concurrent use.
	Now func() time.Time
	// Logger gets JWKS fetch failures. Default: discard.
	Logger *slog.Logger
	// HTTPClient fetches JWKS URLs. Default: a client of its own.
	HTTPClient *http.Client
}

// Auth checks API keys and access tokens against a set of apps, which
// Reload replaces while sessions go on. It is safe for concurrent use.
// Close stops its JWKS refreshes.
type Auth struct {
	now    func() time.Time
	log    *slog.Logger
	client *http.Client

	state atomic.Pointer[authState]

	mu     sync.Mutex // Reload and Close
	caches map[string]*jwksCache
	closed bool
}

// authState is one generation of apps, replaced whole by Reload.
type authState struct {
	byKey   map[[32]byte]*appKeys
	byID    map[string]*appKeys
	changed chan struct{} // closed when the next generation replaces it
}

// appKeys is an app with its keys ready to verify.
type appKeys struct {
	app    App
	static []verifier
	jwks   []*jwksCache
}

// NewAuth returns an Auth for apps. IDs and API keys must be unique, and
// secrets at least 32 bytes. now is the clock for expiry (nil: time.Now);
// it is called from every session's goroutine, so it must be safe for
// concurrent use.
func NewAuth(apps []App, now func() time.Time) (*Auth, error) {
	return NewAuthWith(apps, &AuthOptions{Now: now})
}

// NewAuthWith is NewAuth with options. An app's JWKS URLs are fetched
// before it returns; one that cannot be fetched is logged, and its tokens
// are refused until a later fetch succeeds.
func NewAuthWith(apps []App, o *AuthOptions) (*Auth, error) {
	var opts AuthOptions
	if o != nil {
		opts = *o
	}
	a := &Auth{now: opts.Now, log: opts.Logger, client: opts.HTTPClient, caches: map[string]*jwksCache{}}
	if a.now == nil {
		a.now = time.Now
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.client == nil {
		a.client = &http.Client{}
	}
	if err := a.Reload(apps); err != nil {
		return nil, err
	}
	return a, nil
}

// CheckApps reports what NewAuth would refuse in apps, without fetching
// any key set.
func CheckApps(apps []App) error {
	_, err := prepareApps(apps)
	return err
}

// prepareApps checks apps and parses their static keys.
func prepareApps(apps []App) ([]*appKeys, error) {
	out := make([]*appKeys, 0, len(apps))
	byKey, byID := map[[32]byte]bool{}, map[string]bool{}
	for _, app := range apps {
		if app.ID == "" || app.APIKey == "" {
			return nil, fmt.Errorf("relay: app %q: id and api_key are required", app.ID)
		}
		k := sha256.Sum256([]byte(app.APIKey))
		if byKey[k] {
			return nil, fmt.Errorf("relay: app %q: api_key used by another app", app.ID)
		}
		if byID[app.ID] {
			return nil, fmt.Errorf("relay: app %q listed twice", app.ID)
		}
		byKey[k], byID[app.ID] = true, true
		ak := &appKeys{app: app}
		if app.Secret == "" && len(app.Keys) == 0 {
			return nil, fmt.Errorf("relay: app %q: no keys: give a secret (at least 32 bytes) or keys", app.ID)
		}
		if app.Secret != "" {
			v, err := Key{Secret: app.Secret}.verifier()
			if err != nil {
				return nil, fmt.Errorf("relay: app %q: secret: %w", app.ID, err)
			}
			ak.static = append(ak.static, *v)
		}
		hasJWKS := false
		for i, key := range app.Keys {
			v, err := key.verifier()
			if err != nil {
				return nil, fmt.Errorf("relay: app %q: key %d (%s): %w", app.ID, i, key.kind(), err)
			}
			if v != nil {
				ak.static = append(ak.static, *v)
			} else {
				hasJWKS = true
			}
		}
		if hasJWKS && app.Issuer == "" {
			// A provider's key set may sign tokens of many tenants (one
			// Firebase set signs every project's): the issuer, with the
			// audience, is what makes the token this app's.
			return nil, fmt.Errorf("relay: app %q: an app with a JWKS URL needs an issuer", app.ID)
		}
		if app.Leeway < 0 || app.Leeway > 5*time.Minute {
			return nil, fmt.Errorf("relay: app %q: leeway %v: want 0 to 5m", app.ID, app.Leeway)
		}
		if err := app.Grants.check(); err != nil {
			return nil, fmt.Errorf("relay: app %q: grants: %w", app.ID, err)
		}
		out = append(out, ak)
	}
	return out, nil
}

// Reload replaces the apps, their keys and their claims rules. Sessions
// stay connected; each session's token is checked against the new keys
// at its next request (see Check). A JWKS URL already in use keeps its
// cached set; a new one is fetched before Reload returns. On error
// nothing changes.
func (a *Auth) Reload(apps []App) error {
	prepared, err := prepareApps(apps)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return errors.New("relay: Auth is closed")
	}
	st := &authState{byKey: map[[32]byte]*appKeys{}, byID: map[string]*appKeys{}}
	caches := map[string]*jwksCache{}
	for _, ak := range prepared {
		for _, key := range ak.app.Keys {
			if key.JWKSURL == "" {
				continue
			}
			id := key.cacheID()
			c := caches[id]
			if c == nil {
				if c = a.caches[id]; c == nil {
					c = newJWKSCache(key, a.client, a.now, a.log)
				}
				caches[id] = c
			}
			ak.jwks = append(ak.jwks, c)
		}
		st.byKey[sha256.Sum256([]byte(ak.app.APIKey))] = ak
		st.byID[ak.app.ID] = ak
	}
	st.changed = make(chan struct{})
	old := a.state.Swap(st)
	for id, c := range a.caches {
		if caches[id] == nil {
			c.close()
		}
	}
	a.caches = caches
	if old != nil {
		close(old.changed) // wakes live subscriptions, to check their tokens
	}
	return nil
}

// Close stops refreshing the apps' key sets. Tokens are still checked
// against the sets last fetched.
func (a *Auth) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.closed {
		a.closed = true
		for _, c := range a.caches {
			c.close()
		}
	}
	return nil
}

// Changed returns a channel closed at the next Reload.
func (a *Auth) Changed() <-chan struct{} { return a.state.Load().changed }

// app returns the app with the API key.
func (a *Auth) app(apiKey string) (*appKeys, error) {
	// Keyed by hash so lookups do not compare secrets byte by byte.
	ak, ok := a.state.Load().byKey[sha256.Sum256([]byte(apiKey))]
	if !ok {
		return nil, refuse(CheckAPIKey, errors.New("unknown API key"))
	}
	return ak, nil
}

// hasApp reports whether an app of this ID is configured.
func (a *Auth) hasApp(id string) bool { return a.state.Load().byID[id] != nil }

// Verify checks that token is an unexpired token of the app whose API key is
// given, and returns its app and claims. A refusal is a *TokenError.
func (a *Auth) Verify(apiKey, token string) (App, *Claims, error) {
	ak, err := a.app(apiKey)
	if err != nil {
		return App{}, nil, err
	}
	c, terr := ak.verify(token, a.now)
	if terr != nil {
		terr.App = ak.app.ID
		return App{}, nil, terr
	}
	return ak.app, c, nil
}

// Check reports whether claims that Verify returned still hold at now:
// not expired (allowing the app's leeway), and signed by a key the app
// still has (after a Reload, or after the provider dropped it from its
// JWKS). Either refusal matches ErrTokenExpired: the device sends a fresh
// token. now is the caller's clock: a Server re-checks its sessions'
// tokens by its own (Options.Now), as it runs their leases.
func (a *Auth) Check(c *Claims, now time.Time) error {
	if until := c.ValidUntil(); !now.Before(until) {
		return &TokenError{App: c.app, Check: CheckExpired, kind: ErrTokenExpired, Err: fmt.Errorf("token expired at %s", until.UTC().Format(time.RFC3339))}
	}
	ak := a.state.Load().byID[c.app]
	if ak == nil || !ak.holds(c.key) {
		return &TokenError{App: c.app, Check: CheckKeyRemoved, kind: ErrTokenExpired, Err: errors.New("the key that signed the token is no longer configured")}
	}
	return nil
}

func (ak *appKeys) holds(fp [32]byte) bool {
	if slices.ContainsFunc(ak.static, func(v verifier) bool { return v.fp == fp }) {
		return true
	}
	return slices.ContainsFunc(ak.jwks, func(c *jwksCache) bool { return c.holds(fp) })
}

// verify checks the token's algorithm, signature and claims, in that
// order, and maps its grants.
func (ak *appKeys) verify(token string, now func() time.Time) (*Claims, *TokenError) {
	var tc tokenClaims
	t, parts, err := jwt.NewParser().ParseUnverified(token, &tc)
	if err != nil {
		return nil, refuse(CheckMalformed, err)
	}
	alg := t.Method.Alg()
	kid, _ := t.Header["kid"].(string)
	cands, terr := ak.candidates(kid, alg)
	if terr != nil {
		return nil, terr
	}
	signed := strings.Join(parts[:2], ".")
	var key *verifier
	for i := range cands {
		if t.Method.Verify(signed, t.Signature, cands[i].key) == nil {
			key = &cands[i]
			break
		}
	}
	if key == nil {
		return nil, refuse(CheckSignature, fmt.Errorf("no key of the app verifies the %s signature (%d tried)", alg, len(cands)))
	}
	app := ak.app
	// Audience and issuer first: a token for another app or provider is
	// refused as such even if it has expired too (token_expired would
	// have the device fetch another token of the same kind).
	if !slices.Contains(tc.Audience, app.audience()) {
		return nil, refuse(CheckAudience, fmt.Errorf("token's aud does not include %q", app.audience()))
	}
	if app.Issuer != "" && tc.Issuer != app.Issuer {
		return nil, refuse(CheckIssuer, fmt.Errorf("token's iss is not %q", app.Issuer))
	}
	v := jwt.NewValidator(jwt.WithTimeFunc(now), jwt.WithLeeway(app.Leeway), jwt.WithExpirationRequired())
	if err := v.Validate(&tc.RegisteredClaims); err != nil {
		return nil, refuse(validationCheck(err), err)
	}
	if tc.Subject == "" {
		return nil, refuse(CheckSubject, errors.New("token has no subject"))
	}
	c := &Claims{RegisteredClaims: tc.RegisteredClaims, app: app.ID, key: key.fp, until: tc.ExpiresAt.Add(app.Leeway)}
	if c.Read, c.Write, err = app.Grants.rights(&tc); err != nil {
		return nil, refuse(CheckGrants, err)
	}
	return c, nil
}

// candidates returns the app's keys that may verify a token signed with
// alg and naming kid, never one whose type does not fit alg: an RSA
// public key is never handed to HMAC as a secret.
func (ak *appKeys) candidates(kid, alg string) ([]verifier, *TokenError) {
	if alg == "none" {
		return nil, refuse(CheckAlgorithm, errors.New(`algorithm "none" is never accepted`))
	}
	var vs []verifier
	allowed := false
	for _, v := range ak.static {
		if !slices.Contains(v.algs, alg) {
			continue
		}
		allowed = true
		if v.kid == "" || v.kid == kid {
			vs = append(vs, v)
		}
	}
	if !slices.Contains(hmacAlgs, alg) {
		for _, c := range ak.jwks {
			allowed = allowed || c.algs == nil || slices.Contains(c.algs, alg)
			vs = append(vs, c.candidates(kid, alg)...)
		}
	}
	switch {
	case len(vs) > 0:
		return vs, nil
	case !allowed:
		return nil, refuse(CheckAlgorithm, fmt.Errorf("algorithm %s is not allowed for any key of the app", alg))
	case kid != "":
		return nil, refuse(CheckKey, fmt.Errorf("no key of the app has kid %q", truncate(kid, 64)))
	}
	return nil, refuse(CheckKey, fmt.Errorf("no key of the app without a kid verifies %s", alg))
}

// validationCheck names the time check a jwt validation error failed.
func validationCheck(err error) string {
	switch {
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return CheckMalformed // no exp
	case errors.Is(err, jwt.ErrTokenExpired):
		return CheckExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return CheckNotYet
	}
	return CheckMalformed
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// TokenRequest describes a token to issue.
type TokenRequest struct {
	Subject string        // the user or device
	TTL     time.Duration // lifetime
	Read    []string      // collections it may read ("*": all)
	Write   []string      // collections it may write (and read)
}

// IssueToken signs an access token for the app with its first HMAC
// secret (naming the key's kid, if it has one). now stamps it.
func IssueToken(app App, req TokenRequest, now time.Time) (string, error) {
	if req.Subject == "" || req.TTL <= 0 {
		return "", errors.New("relay: a token needs a subject and a positive TTL")
	}
	key := Key{Secret: app.Secret}
	if key.Secret == "" {
		for _, k := range app.Keys {
			if k.Secret != "" {
				key = k
				break
			}
		}
	}
	if key.Secret == "" {
		return "", fmt.Errorf("relay: app %q has no HMAC secret to sign with: its tokens come from its identity provider", app.ID)
	}
	if len(key.Secret) < 32 {
		return "", fmt.Errorf("relay: app %q: secret must be at least 32 bytes", app.ID)
	}
	c := Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    app.Issuer,
			Subject:   req.Subject,
			Audience:  jwt.ClaimStrings{app.audience()},
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(req.TTL)),
		},
		Read:  req.Read,
		Write: req.Write,
	}
	t := jwt.NewWithClaims(jwt.SigningMethodHS256, c)
	if key.ID != "" {
		t.Header["kid"] = key.ID
	}
	return t.SignedString([]byte(key.Secret))
}

// NewApp makes an app with a random API key and secret.
func NewApp(id string) App {
	return App{ID: id, APIKey: "fk_" + randomHex(16), Secret: randomHex(32)}
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
