package ca_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"io"
	"math/big"
	"testing"

	"github.com/hsmca/hsmca/ca"
)

// A CSR for an RSA key whose primes sit 2^400 apart (factored at once by
// Fermat's method) gets no certificate: a bad-CSR error, no signature, no
// record.
func TestIssueRefusesFactorableRSAKey(t *testing.T) {
	p, err := rand.Prime(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	q := new(big.Int).Add(p, new(big.Int).Lsh(big.NewInt(1), 400))
	for !q.ProbablyPrime(20) {
		q.Add(q, big.NewInt(1))
	}
	one := big.NewInt(1)
	phi := new(big.Int).Mul(new(big.Int).Sub(p, one), new(big.Int).Sub(q, one))
	key := &rsa.PrivateKey{
		PublicKey: rsa.PublicKey{N: new(big.Int).Mul(p, q), E: 65537},
		D:         new(big.Int).ModInverse(big.NewInt(65537), phi),
		Primes:    []*big.Int{p, q},
	}

	// crypto/rsa refuses to sign with primes this close, as it should;
	// other software does not, so the CSR is signed by hand here.
	tc := newTestCA(t, baseConfig(), ca.Options{})
	csr := makeCSR(t, csrOpts{dns: []string{"weak.svc.corp"}, key: textbookRSA{key}})
	_, err = tc.Issue(context.Background(), ca.IssueRequest{CSR: csr, Profile: "server"})
	var bad *ca.ErrBadCSR
	if !errors.As(err, &bad) || bad.Rule != "weak RSA key" {
		t.Fatalf("Issue: %v, want a bad CSR error for a weak RSA key", err)
	}
	if n := tc.signer.calls.Load(); n != 0 {
		t.Errorf("the issuer key signed %d times", n)
	}
	if n := countCerts(t, tc.CA); n != 0 {
		t.Errorf("%d records stored for a refused CSR", n)
	}
}

// textbookRSA signs PKCS#1 v1.5 SHA-256 with plain modular exponentiation,
// for keys crypto/rsa will not use.
type textbookRSA struct{ k *rsa.PrivateKey }

func (s textbookRSA) Public() crypto.PublicKey { return &s.k.PublicKey }

func (s textbookRSA) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts.HashFunc() != crypto.SHA256 {
		return nil, errors.New("textbookRSA: SHA-256 only")
	}
	// DigestInfo prefix for SHA-256 (RFC 8017 §9.2, note 1).
	prefix := []byte{0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20}
	size := (s.k.N.BitLen() + 7) / 8
	em := make([]byte, size)
	em[1] = 1
	tLen := len(prefix) + len(digest)
	for i := 2; i < size-tLen-1; i++ {
		em[i] = 0xff
	}
	copy(em[size-tLen:], prefix)
	copy(em[size-len(digest):], digest)
	sig := new(big.Int).Exp(new(big.Int).SetBytes(em), s.k.D, s.k.N)
	return sig.FillBytes(make([]byte, size)), nil
}
