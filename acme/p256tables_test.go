package acme

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"
)

// A key gets its table at its p256TableAfter-th verification, keeps it,
// and the number of tables stays bounded (the first keys to qualify keep
// theirs); keys of other curves never get one; an epoch later the set
// starts over.
func TestP256TablesBuildAtThreshold(t *testing.T) {
	var tabs p256Tables
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for i := 1; i < p256TableAfter; i++ {
		if tabs.get(&k.PublicKey) != nil {
			t.Fatalf("table after %d verifications, want none before %d", i, p256TableAfter)
		}
	}
	first := tabs.get(&k.PublicKey)
	if first == nil {
		t.Fatalf("no table at verification %d", p256TableAfter)
	}
	if tabs.get(&k.PublicKey) != first {
		t.Fatal("the table was not kept")
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for range p256TableAfter + 1 {
		if tabs.get(&p384.PublicKey) != nil {
			t.Fatal("a P-384 key got a P-256 table")
		}
	}
	for range p256TablesMax + 1 {
		o, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		for range p256TableAfter {
			tabs.get(&o.PublicKey)
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
