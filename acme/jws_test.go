package acme

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
)

func TestVerifyAlgorithms(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, ek, _ := ed25519.GenerateKey(rand.Reader)
	cases := []struct {
		name string
		alg  jose.SignatureAlgorithm
		key  crypto.Signer
	}{
		{"ES256", jose.ES256, p256},
		{"ES384", jose.ES384, p384},
		{"RS256", jose.RS256, rk},
		{"EdDSA", jose.EdDSA, ek},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := jose.NewSigner(jose.SigningKey{Algorithm: c.alg, Key: c.key}, &jose.SignerOptions{EmbedJWK: true,
				ExtraHeaders: map[jose.HeaderKey]any{"nonce": "n", "url": "https://ca.test/acme/new-account"}})
			if err != nil {
				t.Fatal(err)
			}
			j, _ := s.Sign([]byte(`{"a":1}`))
			body := j.FullSerialize()
			p, prob := parseJWS([]byte(body))
			if prob != nil {
				t.Fatal(prob)
			}
			if !p.verify(p.jwk) {
				t.Fatal("valid signature refused")
			}
			other := &jose.JSONWebKey{Key: p256.Public()}
			if c.name != "ES256" && p.verify(other) {
				t.Fatal("verified with a key of another type")
			}
			// Tamper with the payload.
			var f map[string]string
			json.Unmarshal([]byte(body), &f)
			f["payload"] = "eyJhIjoyfQ"
			b, _ := json.Marshal(f)
			p2, prob := parseJWS(b)
			if prob != nil {
				t.Fatal(prob)
			}
			if p2.verify(p2.jwk) {
				t.Fatal("tampered payload verified")
			}
		})
	}
}

func BenchmarkParseVerifyES256(b *testing.B) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	s, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, &jose.SignerOptions{
		ExtraHeaders: map[jose.HeaderKey]any{"nonce": "AAAAAAAAAAAAAAAAAAAAAA", "url": "https://ca.test/acme/new-order", "kid": "https://ca.test/acme/acct/x"}})
	j, _ := s.Sign([]byte(`{"identifiers":[{"type":"dns","value":"a.example.test"}]}`))
	body := []byte(j.FullSerialize())
	key := &jose.JSONWebKey{Key: k.Public()}
	b.ReportAllocs()
	for b.Loop() {
		p, prob := parseJWS(body)
		if prob != nil || !p.verify(key) {
			b.Fatal("refused")
		}
	}
}

// EAB key IDs never start with "-": `hsmca acme eab revoke KEYID` would
// read such an ID as a flag (one draw in 64 did).
func TestEABKeyIDNeverLooksLikeAFlag(t *testing.T) {
	for range 2000 {
		if id := newEABKeyID(); id[0] == '-' || len(id) != 16 {
			t.Fatalf("key ID %q", id)
		}
	}
}
