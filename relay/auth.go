package relay

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// App is a tenant: an application whose devices share data through the
// relay. Apps never see each other's data.
type App struct {
	ID     string `json:"id"`
	APIKey string `json:"api_key"` // presented by every device of the app
	// Secret signs the app's access tokens (HMAC-SHA256). Keep it on the
	// server that issues tokens; devices never need it.
	Secret string `json:"secret"`
}

// Claims are what an access token grants: who (Subject), until when
// (ExpiresAt), in which app (Audience), and which collections it may read
// and write ("*" means all). A read-only device has a token with no write
// rights.
type Claims struct {
	jwt.RegisteredClaims
	Read  []string `json:"read,omitempty"`
	Write []string `json:"write,omitempty"`
}

// CanRead reports whether the claims allow reading the collection.
func (c *Claims) CanRead(coll string) bool { return grants(c.Read, coll) || grants(c.Write, coll) }

// CanWrite reports whether the claims allow writing the collection.
func (c *Claims) CanWrite(coll string) bool { return grants(c.Write, coll) }

// Expired reports whether the token has expired at now: a token with an
// expiry is good while now is before it. Every endpoint checks by it.
func (c *Claims) Expired(now time.Time) bool {
	return c.ExpiresAt != nil && !now.Before(c.ExpiresAt.Time)
}

func grants(list []string, coll string) bool {
	return slices.Contains(list, "*") || slices.Contains(list, coll)
}

var (
	// ErrUnauthenticated means the API key is unknown or the token is not
	// a valid token of that app (bad signature, wrong app, malformed).
	ErrUnauthenticated = errors.New("relay: unauthenticated")
	// ErrTokenExpired means the token was valid but has expired.
	ErrTokenExpired = errors.New("relay: token expired")
)

// Auth checks API keys and access tokens against a fixed set of apps. It is
// safe for concurrent use.
type Auth struct {
	byKey map[[32]byte]App
	byID  map[string]App
	now   func() time.Time
}

// NewAuth returns an Auth for apps. IDs and API keys must be unique and
// secrets at least 32 bytes. now is the clock for expiry (nil: time.Now);
// it is called from every session's goroutine, so it must be safe for
// concurrent use.
func NewAuth(apps []App, now func() time.Time) (*Auth, error) {
	if now == nil {
		now = time.Now
	}
	a := &Auth{byKey: map[[32]byte]App{}, byID: map[string]App{}, now: now}
	for _, app := range apps {
		switch {
		case app.ID == "" || app.APIKey == "":
			return nil, fmt.Errorf("relay: app %q: id and api_key are required", app.ID)
		case len(app.Secret) < 32:
			return nil, fmt.Errorf("relay: app %q: secret must be at least 32 bytes", app.ID)
		}
		k := sha256.Sum256([]byte(app.APIKey))
		if _, dup := a.byKey[k]; dup {
			return nil, fmt.Errorf("relay: app %q: api_key used by another app", app.ID)
		}
		if _, dup := a.byID[app.ID]; dup {
			return nil, fmt.Errorf("relay: app %q listed twice", app.ID)
		}
		a.byKey[k], a.byID[app.ID] = app, app
	}
	return a, nil
}

// app returns the app with the API key.
func (a *Auth) app(apiKey string) (App, error) {
	// Keyed by hash so lookups do not compare secrets byte by byte.
	app, ok := a.byKey[sha256.Sum256([]byte(apiKey))]
	if !ok {
		return App{}, fmt.Errorf("%w: unknown API key", ErrUnauthenticated)
	}
	return app, nil
}

// Verify checks that token is an unexpired token of the app whose API key is
// given, and returns its app and claims.
func (a *Auth) Verify(apiKey, token string) (App, *Claims, error) {
	app, err := a.app(apiKey)
	if err != nil {
		return App{}, nil, err
	}
	var c Claims
	_, err = jwt.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return []byte(app.Secret), nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithAudience(app.ID),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(a.now),
	)
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return App{}, nil, fmt.Errorf("%w: %v", ErrTokenExpired, err)
	case err != nil:
		return App{}, nil, fmt.Errorf("%w: %v", ErrUnauthenticated, err)
	case c.Subject == "":
		return App{}, nil, fmt.Errorf("%w: token has no subject", ErrUnauthenticated)
	}
	return app, &c, nil
}

// TokenRequest describes a token to issue.
type TokenRequest struct {
	Subject string        // the user or device
	TTL     time.Duration // lifetime
	Read    []string      // collections it may read ("*": all)
	Write   []string      // collections it may write (and read)
}

// IssueToken signs an access token for the app. now stamps it.
func IssueToken(app App, req TokenRequest, now time.Time) (string, error) {
	if req.Subject == "" || req.TTL <= 0 {
		return "", errors.New("relay: a token needs a subject and a positive TTL")
	}
	if len(app.Secret) < 32 {
		return "", fmt.Errorf("relay: app %q: secret must be at least 32 bytes", app.ID)
	}
	c := Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   req.Subject,
			Audience:  jwt.ClaimStrings{app.ID},
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(req.TTL)),
		},
		Read:  req.Read,
		Write: req.Write,
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte(app.Secret))
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
