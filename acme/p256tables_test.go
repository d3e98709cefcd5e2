package acme

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
)

// A key gets its table at its p256TableAfter-th verified signature, keeps
// it, and the number of tables stays bounded (the first keys to qualify
// keep theirs); keys of other curves never get one; an epoch later the
// set starts over.
func TestP256TablesBuildAtThreshold(t *testing.T) {
	var tabs p256Tables
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for i := 1; i < p256TableAfter; i++ {
		if tabs.get(&k.PublicKey) != nil || tabs.verified(&k.PublicKey) != nil {
			t.Fatalf("table after %d verifications, want none before %d", i, p256TableAfter)
		}
	}
	if tabs.get(&k.PublicKey) != nil {
		t.Fatal("table before it was built")
	}
	first := tabs.verified(&k.PublicKey)
	if first == nil {
		t.Fatalf("no table at verification %d", p256TableAfter)
	}
	if tabs.get(&k.PublicKey) != first {
		t.Fatal("the table was not kept")
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for range p256TableAfter + 1 {
		if tabs.get(&p384.PublicKey) != nil || tabs.verified(&p384.PublicKey) != nil {
			t.Fatal("a P-384 key got a P-256 table")
		}
	}
	for range p256TablesMax + 1 {
		o, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		for range p256TableAfter {
			tabs.get(&o.PublicKey)
			tabs.verified(&o.PublicKey)
		}
		if n := len(tabs.tables); n > p256TablesMax {
			t.Fatalf("%d tables kept, want at most %d", n, p256TablesMax)
		}
	}
	if tabs.get(&k.PublicKey) != first {
		t.Fatal("the first key lost its table to later ones")
	}
	tabs.n = p256Epoch - 1
	if tabs.get(&k.PublicKey) != nil {
		t.Fatal("the tables did not start over after an epoch")
	}
}

// Requests whose signatures do not verify count for nothing: however many
// arrive under an account key, they neither earn it a table nor take a
// table slot; valid ones then earn it as usual, and the table path still
// refuses the forgery.
func TestP256TablesCountOnlyVerified(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	key := &jose.JSONWebKey{Key: &k.PublicKey}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, &jose.SignerOptions{
		ExtraHeaders: map[jose.HeaderKey]any{"nonce": "n", "url": "https://ca.test/acme/new-order", "kid": "https://ca.test/acme/acct/x"}})
	if err != nil {
		t.Fatal(err)
	}
	j, err := s.Sign([]byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	good := []byte(j.FullSerialize())
	var f map[string]string
	if err := json.Unmarshal(good, &f); err != nil {
		t.Fatal(err)
	}
	sig, _ := base64.RawURLEncoding.DecodeString(f["signature"])
	sig[10] ^= 0x80
	f["signature"] = base64.RawURLEncoding.EncodeToString(sig)
	bad, _ := json.Marshal(f)
	parse := func(b []byte) *parsedJWS {
		p, prob := parseJWS(b)
		if prob != nil {
			t.Fatal(prob)
		}
		return p
	}
	var tabs p256Tables
	for i := range 4 * p256TableAfter {
		if parse(bad).verifyAccount(key, &tabs) {
			t.Fatalf("forged request %d verified", i)
		}
	}
	if len(tabs.tables) != 0 || tabs.uses[&k.PublicKey] != 0 {
		t.Fatalf("forged requests counted: %d tables, %d uses", len(tabs.tables), tabs.uses[&k.PublicKey])
	}
	for i := range p256TableAfter {
		if !parse(good).verifyAccount(key, &tabs) {
			t.Fatalf("valid request %d refused", i)
		}
	}
	if tabs.get(&k.PublicKey) == nil {
		t.Fatalf("no table after %d valid requests", p256TableAfter)
	}
	if parse(bad).verifyAccount(key, &tabs) {
		t.Fatal("forged request verified through the table")
	}
	if !parse(good).verifyAccount(key, &tabs) {
		t.Fatal("valid request refused through the table")
	}
}
