package relaytest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

// IdP is a local identity provider, the kind an app already has (an OIDC
// server, Auth0, Firebase Auth, Keycloak): it signs tokens with its
// private keys and publishes the public halves as a JSON Web Key Set at
// URL, on loopback. Keys can be added and unpublished (rotation), and the
// set taken down, to see what a relay does then. Its methods are safe for
// concurrent use.
type IdP struct {
	URL    string // the JWKS URL
	Issuer string // the "iss" of its tokens

	mu      sync.Mutex
	keys    map[string]idpKey
	order   []string          // kids in the order added
	raw     []json.RawMessage // extra JWKs published as given
	down    bool
	fetches int
	hs      *httptest.Server
}

type idpKey struct {
	alg       string
	priv      crypto.Signer
	published bool
}

// StartIdP starts an identity provider with no keys; t.Cleanup stops it.
func StartIdP(t testing.TB) *IdP {
	t.Helper()
	p := &IdP{keys: map[string]idpKey{}}
	p.hs = httptest.NewServer(p.Handler())
	p.URL = p.hs.URL + "/.well-known/jwks.json"
	p.Issuer = p.hs.URL + "/"
	t.Cleanup(p.hs.Close)
	return p
}

// Handler serves the key set (503 while down). Tests that run inside a
// testing/synctest bubble call it in-process, through a RoundTripper,
// rather than over loopback.
func (p *IdP) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.fetches++
		if p.down {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		set := struct {
			Keys []any `json:"keys"`
		}{Keys: []any{}}
		for _, kid := range p.order {
			k := p.keys[kid]
			if !k.published {
				continue
			}
			jwk, err := jwkset.NewJWKFromKey(k.priv.Public(), jwkset.JWKOptions{
				Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: jwkset.ALG(k.alg), USE: jwkset.UseSig},
			})
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			set.Keys = append(set.Keys, jwk.Marshal())
		}
		for _, r := range p.raw {
			set.Keys = append(set.Keys, r)
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(set)
	})
}

// AddKey makes a key for alg (RS256, RS384, RS512, PS256, PS384, PS512:
// RSA 2048; ES256, ES384, ES512: the curve's ECDSA; EdDSA: Ed25519) and
// publishes it under kid.
func (p *IdP) AddKey(t testing.TB, kid, alg string) {
	t.Helper()
	var priv crypto.Signer
	var err error
	switch alg {
	case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ES256":
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ES384":
		priv, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "ES512":
		priv, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	case "EdDSA":
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	default:
		t.Fatalf("IdP: no key type for algorithm %q", alg)
	}
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, dup := p.keys[kid]; !dup {
		p.order = append(p.order, kid)
	}
	p.keys[kid] = idpKey{alg: alg, priv: priv, published: true}
}

// Unpublish drops kid from the key set; the IdP can still sign with it,
// as a leaked or retired key still signs.
func (p *IdP) Unpublish(kid string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := p.keys[kid]
	k.published = false
	p.keys[kid] = k
}

// PublishRaw adds a JWK to the set as given (a symmetric key, say).
func (p *IdP) PublishRaw(jwk string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.raw = append(p.raw, json.RawMessage(jwk))
}

// SetDown makes the key set answer 503 (true) or serve again (false).
func (p *IdP) SetDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
}

// Fetches is how many times the key set was asked for.
func (p *IdP) Fetches() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fetches
}

// PublicKeyPEM is kid's public key as a PEM "PUBLIC KEY" block.
func (p *IdP) PublicKeyPEM(t testing.TB, kid string) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(p.key(t, kid).priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// Sign signs claims with kid's key and algorithm, naming kid in the
// header unless noKid.
func (p *IdP) Sign(t testing.TB, kid string, claims jwt.MapClaims, noKid bool) string {
	t.Helper()
	k := p.key(t, kid)
	tok := jwt.NewWithClaims(jwt.GetSigningMethod(k.alg), claims)
	if !noKid {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(k.priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Token signs a token the way an identity provider does: its issuer, the
// subject and audience given, issued at now and valid for ttl, with any
// extra claims (a custom claim carrying rights, say).
func (p *IdP) Token(t testing.TB, kid, sub, aud string, now time.Time, ttl time.Duration, extra map[string]any) string {
	t.Helper()
	c := jwt.MapClaims{"iss": p.Issuer, "sub": sub, "aud": aud, "iat": now.Unix(), "exp": now.Add(ttl).Unix()}
	for k, v := range extra {
		c[k] = v
	}
	return p.Sign(t, kid, c, false)
}

// Kids lists the published kids, in the order added.
func (p *IdP) Kids() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.DeleteFunc(slices.Clone(p.order), func(kid string) bool { return !p.keys[kid].published })
}

func (p *IdP) key(t testing.TB, kid string) idpKey {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	k, ok := p.keys[kid]
	if !ok {
		t.Fatalf("IdP: no key %q", kid)
	}
	return k
}
