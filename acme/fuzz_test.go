package acme

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"strings"
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
	// {"alg":"ES256","kid":"k","url":"u","crit":["b64"],"b64":false}
	f.Add(`{"protected":"eyJhbGciOiJFUzI1NiIsImtpZCI6ImsiLCJ1cmwiOiJ1IiwiY3JpdCI6WyJiNjQiXSwiYjY0IjpmYWxzZX0","payload":"e30","signature":"AA"}`)
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
		if p.hdr.Crit != nil || (p.hdr.B64 != nil && string(p.hdr.B64) != "true") {
			t.Fatalf("accepted crit %s, b64 %s", p.hdr.Crit, p.hdr.B64)
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

// FuzzIdentifier feeds newOrder's identifier check: accepted identifiers
// are canonical (normalizing again changes nothing).
func FuzzIdentifier(f *testing.F) {
	for _, s := range []string{"dns|a.example.test", "dns|*.Example.TEST", "dns|*.*.a.test", "dns|a..b", "dns|-a.test",
		"ip|127.0.0.1", "ip|::ffff:10.0.0.1", "ip|fe80::1%eth0", "email|a@b.test", "dns|127.0.0.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		typ, val, _ := strings.Cut(s, "|")
		id, wild, p := normalizeIdentifier(Identifier{Type: typ, Value: val})
		if p != nil {
			return
		}
		id2, wild2, p2 := normalizeIdentifier(id)
		if p2 != nil || id2 != id || wild2 != wild {
			t.Fatalf("%q normalized to %q, then %q (%v)", val, id.Value, id2.Value, p2)
		}
		if wild && !strings.HasPrefix(id.Value, "*.") {
			t.Fatal("wildcard without *.")
		}
	})
}

// FuzzCertID feeds the RFC 9773 CertID parser.
func FuzzCertID(f *testing.F) {
	f.Add("aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE")
	f.Add(".")
	f.Add("a.b.c")
	f.Add("AAAA.")
	f.Fuzz(func(t *testing.T, s string) {
		aki, serial, p := parseCertID(s)
		if p == nil && (len(aki) == 0 || serial == "") {
			t.Fatal("accepted an empty part")
		}
	})
}
