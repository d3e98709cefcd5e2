package acme

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
)

func signedSeed(t testing.TB, payload string, jwk bool) string {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	hdr := map[jose.HeaderKey]any{"nonce": "AAAAAAAAAAAAAAAAAAAAAA", "url": "https://ca.test/acme/new-order"}
	if !jwk {
		hdr["kid"] = "https://ca.test/acme/acct/abc"
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, &jose.SignerOptions{EmbedJWK: jwk, ExtraHeaders: hdr})
	if err != nil {
		t.Fatal(err)
	}
	j, err := s.Sign([]byte(payload))
	if err != nil {
		t.Fatal(err)
	}
	return j.FullSerialize()
}

// FuzzParseJWS feeds the request parser: it must never panic, and what it
// accepts must have an allowed algorithm and exactly one of kid and jwk.
func FuzzParseJWS(f *testing.F) {
	f.Add(signedSeed(f, `{"identifiers":[{"type":"dns","value":"a.test"}]}`, false))
	f.Add(signedSeed(f, ``, false))
	f.Add(signedSeed(f, `{"termsOfServiceAgreed":true}`, true))
	f.Add(`{"protected":"e30","payload":"","signature":"AA"}`)
	f.Add(`{"protected":"eyJhbGciOiJub25lIn0","payload":"e30","signature":""}`)
	f.Add(`{"signatures":[]}`)
	f.Add(`null`)
	f.Add(``)
	n, err := newNonceSource(context.Background(), &memMeta{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body string) {
		p, prob := parseJWS([]byte(body))
		if prob != nil {
			if prob.Type == "" || prob.Status == 0 {
				t.Fatalf("incomplete problem %+v", prob)
			}
			return
		}
		if !algAllowed(p.hdr.Alg) {
			t.Fatalf("accepted alg %q", p.hdr.Alg)
		}
		if (p.jwk != nil) == (p.hdr.Kid != "") {
			t.Fatal("accepted both or neither of kid and jwk")
		}
		if p.jwk != nil {
			p.verify(p.jwk)
		}
		n.Use(p.hdr.Nonce)
	})
}
