package relay

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Key is one key an app's tokens may be signed with: exactly one of an
// HMAC secret, a PEM public key, or the URL of an identity provider's key
// set (JWKS). An app may have several at once, so that keys can be
// rotated without downtime: add the new key, move the issuer to it, then
// remove the old one.
type Key struct {
	// ID, if set, is the key's kid: only tokens whose header names it are
	// checked against it. A key without an ID is tried for every token.
	// Not for a JWKS, whose keys carry their own kids.
	ID string
	// Secret is an HMAC secret of at least 32 bytes.
	Secret string
	// PublicKey is a PEM block: a public key (PKIX "PUBLIC KEY", or
	// "RSA PUBLIC KEY") or a certificate, holding an RSA key of at least
	// 2048 bits, an ECDSA key on P-256, P-384 or P-521, or an Ed25519 key.
	PublicKey string
	// JWKSURL is an http or https URL serving a JSON Web Key Set. The
	// relay fetches it at start, every Refresh, and when a token names a
	// kid the set lacks (at most once per JWKSMinRefresh); when the URL
	// is down it keeps verifying with the last set it fetched.
	JWKSURL string
	// Refresh is how often JWKSURL is fetched again (0: an hour; at
	// least JWKSMinRefresh).
	Refresh time.Duration
	// Algorithms restricts the JWS algorithms accepted with this key. By
	// default: HS256, HS384 and HS512 for a secret; RS256, RS384, RS512,
	// PS256, PS384 and PS512 for RSA; the curve's own ES256, ES384 or
	// ES512 for ECDSA; EdDSA for Ed25519. "none" is never accepted, nor
	// an HMAC algorithm with a public key or a JWKS.
	Algorithms []string
}

// Algorithm families by key type.
var (
	hmacAlgs    = []string{"HS256", "HS384", "HS512"}
	rsaAlgs     = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
	ed25519Algs = []string{"EdDSA"}
	publicAlgs  = slices.Concat(rsaAlgs, []string{"ES256", "ES384", "ES512"}, ed25519Algs)
)

const (
	defaultJWKSRefresh = time.Hour
	// JWKSMinRefresh is the least time between two fetches of a key set
	// prompted by an unknown kid or a failed fetch, so that tokens naming
	// made-up kids cannot make the relay hammer the identity provider.
	JWKSMinRefresh = 30 * time.Second
)

// verifier is one usable key: its material, its kid, the algorithms it
// verifies, and a fingerprint that names it across reloads.
type verifier struct {
	kid  string
	key  any // []byte (HMAC), *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey
	algs []string
	fp   [32]byte
}

// Check reports whether the key is well formed, without fetching a JWKS.
func (k Key) Check() error {
	_, err := k.verifier()
	return err
}

// kind names the key's type for messages and logs.
func (k Key) kind() string {
	switch {
	case k.Secret != "":
		return "secret"
	case k.PublicKey != "":
		return "public key"
	}
	return "jwks"
}

// verifier parses a secret or PEM key; for a JWKS it returns nil after
// checking the URL and algorithms.
func (k Key) verifier() (*verifier, error) {
	n := 0
	for _, s := range []string{k.Secret, k.PublicKey, k.JWKSURL} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		return nil, errors.New("want exactly one of secret, public key and JWKS URL")
	}
	if k.Refresh < 0 {
		return nil, errors.New("refresh is negative")
	}
	if k.ID != "" && k.JWKSURL != "" {
		return nil, errors.New("kid with a JWKS URL: the set names its own keys")
	}
	if k.Refresh != 0 && k.JWKSURL == "" {
		return nil, errors.New("refresh only means something with a JWKS URL")
	}
	if k.Refresh != 0 && k.Refresh < JWKSMinRefresh {
		return nil, fmt.Errorf("refresh %v: want at least %v (a provider's keys change rarely; new ones are fetched when a token names them)", k.Refresh, JWKSMinRefresh)
	}
	switch {
	case k.Secret != "":
		if len(k.Secret) < 32 {
			return nil, errors.New("secret must be at least 32 bytes")
		}
		algs, err := allowedAlgs(k.Algorithms, hmacAlgs, "a secret")
		if err != nil {
			return nil, err
		}
		return &verifier{kid: k.ID, key: []byte(k.Secret), algs: algs, fp: sha256.Sum256([]byte("hmac:" + k.Secret))}, nil
	case k.PublicKey != "":
		pub, err := parsePublicKeyPEM(k.PublicKey)
		if err != nil {
			return nil, err
		}
		v, err := publicVerifier(k.ID, pub, k.Algorithms)
		if err != nil {
			return nil, err
		}
		return v, nil
	}
	u, err := url.Parse(k.JWKSURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("JWKS URL %q: want an http or https URL", k.JWKSURL)
	}
	if _, err := allowedAlgs(k.Algorithms, publicAlgs, "a JWKS"); err != nil {
		return nil, err
	}
	return nil, nil
}

// allowedAlgs returns the configured algorithms, all within family, or
// the family itself when none are configured.
func allowedAlgs(configured, family []string, what string) ([]string, error) {
	if len(configured) == 0 {
		return family, nil
	}
	for _, a := range configured {
		if !slices.Contains(family, a) {
			return nil, fmt.Errorf("algorithm %q cannot be used with %s (want some of %s)", a, what, strings.Join(family, ", "))
		}
	}
	return configured, nil
}

// publicVerifier makes a verifier of a public key, with the algorithms
// its type and size allow, narrowed by configured.
func publicVerifier(kid string, pub any, configured []string) (*verifier, error) {
	var family []string
	var what string
	switch p := pub.(type) {
	case *rsa.PublicKey:
		if p.N.BitLen() < 2048 {
			return nil, fmt.Errorf("RSA key of %d bits: want at least 2048", p.N.BitLen())
		}
		family, what = rsaAlgs, "an RSA key"
	case *ecdsa.PublicKey:
		switch p.Curve {
		case elliptic.P256():
			family = []string{"ES256"}
		case elliptic.P384():
			family = []string{"ES384"}
		case elliptic.P521():
			family = []string{"ES512"}
		default:
			return nil, errors.New("ECDSA key on an unsupported curve (want P-256, P-384 or P-521)")
		}
		what = "this ECDSA key"
	case ed25519.PublicKey:
		family, what = ed25519Algs, "an Ed25519 key"
	default:
		return nil, fmt.Errorf("unsupported public key type %T", pub)
	}
	algs, err := allowedAlgs(configured, family, what)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	return &verifier{kid: kid, key: pub, algs: algs, fp: sha256.Sum256(der)}, nil
}

// parsePublicKeyPEM reads the one PEM block of text: a public key or a
// certificate. A private key is refused rather than used, so that it is
// not left on the relay by mistake.
func parsePublicKeyPEM(text string) (any, error) {
	b, rest := pem.Decode([]byte(text))
	if b == nil {
		return nil, errors.New("public key: not PEM (want -----BEGIN PUBLIC KEY-----)")
	}
	if strings.TrimSpace(string(rest)) != "" {
		return nil, errors.New("public key: more than one PEM block")
	}
	switch b.Type {
	case "PUBLIC KEY":
		pub, err := x509.ParsePKIXPublicKey(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("public key: %w", err)
		}
		return pub, nil
	case "RSA PUBLIC KEY":
		pub, err := x509.ParsePKCS1PublicKey(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("public key: %w", err)
		}
		return pub, nil
	case "CERTIFICATE":
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("public key: %w", err)
		}
		return cert.PublicKey, nil
	}
	if strings.Contains(b.Type, "PRIVATE") {
		return nil, fmt.Errorf("public key: this is a %s: give the public key only", b.Type)
	}
	return nil, fmt.Errorf("public key: PEM block %q (want PUBLIC KEY or CERTIFICATE)", b.Type)
}
