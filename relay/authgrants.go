package relay

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/golang-jwt/jwt/v5"
)

// Grants says where an app's tokens get their read and write rights. By
// default they are the token's own "read" and "write" claims (what
// `ferry token` mints). An identity provider that can add a custom claim
// names it in ReadClaim or WriteClaim; one that cannot is given fixed
// rights in Read and Write, where "{sub}" stands for the token's subject
// ("notes-{sub}": each user their own collection). Rights from claims and
// fixed rights add up. With fixed rights and no claim named, the token's
// claims are not read at all.
type Grants struct {
	ReadClaim  string   `json:"read_claim,omitempty"`
	WriteClaim string   `json:"write_claim,omitempty"`
	Read       []string `json:"read,omitempty"`
	Write      []string `json:"write,omitempty"`
}

const subjectPlaceholder = "{sub}"

// check refuses empty names and placeholders other than {sub}, which
// would otherwise grant a literal "{user}" collection nobody means.
func (g Grants) check() error {
	for _, list := range []struct {
		name string
		v    []string
	}{{"read", g.Read}, {"write", g.Write}} {
		for _, t := range list.v {
			if t == "" {
				return fmt.Errorf("%s: an empty collection name", list.name)
			}
			if strings.ContainsAny(strings.ReplaceAll(t, subjectPlaceholder, ""), "{}") {
				return fmt.Errorf("%s: %q: the only placeholder is %s", list.name, t, subjectPlaceholder)
			}
		}
	}
	return nil
}

// claimNames returns the claims rights are read from.
func (g Grants) claimNames() (read, write string) {
	if g.ReadClaim == "" && g.WriteClaim == "" && len(g.Read) == 0 && len(g.Write) == 0 {
		return "read", "write"
	}
	return g.ReadClaim, g.WriteClaim
}

// rights returns a verified token's read and write lists.
func (g Grants) rights(tc *tokenClaims) (read, write []string, err error) {
	rc, wc := g.claimNames()
	if read, err = tc.names(rc); err != nil {
		return nil, nil, err
	}
	if write, err = tc.names(wc); err != nil {
		return nil, nil, err
	}
	read = append(read, expand(g.Read, tc.Subject)...)
	write = append(write, expand(g.Write, tc.Subject)...)
	return read, write, nil
}

// expand fills {sub} into each template. A subject can never make a
// wildcard: "{sub}" with the subject "*" grants nothing.
func expand(templates []string, sub string) []string {
	var out []string
	for _, t := range templates {
		name := strings.ReplaceAll(t, subjectPlaceholder, sub)
		if name == "*" && t != "*" {
			continue
		}
		out = append(out, name)
	}
	return out
}

// tokenClaims are a token's registered claims and all of its claims as
// raw JSON, for the ones Grants names.
type tokenClaims struct {
	jwt.RegisteredClaims
	raw map[string]json.RawMessage
}

func (tc *tokenClaims) UnmarshalJSON(b []byte) error {
	if err := json.Unmarshal(b, &tc.RegisteredClaims); err != nil {
		return err
	}
	return json.Unmarshal(b, &tc.raw)
}

// names reads the claim as a list of collection names: a JSON array of
// strings, or one string of names separated by spaces (as OAuth scopes
// are). A missing claim is an empty list; any other shape is an error, so
// that a mapping mistake shows rather than granting nothing in silence.
func (tc *tokenClaims) names(claim string) ([]string, error) {
	raw, ok := tc.raw[claim]
	if claim == "" || !ok || string(raw) == "null" {
		return nil, nil
	}
	var list []string
	if json.Unmarshal(raw, &list) == nil {
		return list, nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return strings.Fields(s), nil
	}
	return nil, fmt.Errorf("claim %q is neither a list of collection names nor a string of them", claim)
}
