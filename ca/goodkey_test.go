package ca

import (
	"crypto/rand"
	"crypto/rsa"
	"math/big"
	"strings"
	"testing"
)

// closePrimeKey returns an RSA key whose primes are p and the next prime
// after p + 2^gapBits, with p a random 1024-bit prime.
func closePrimeKey(t testing.TB, gapBits uint) *rsa.PrivateKey {
	t.Helper()
	p, err := rand.Prime(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	q := new(big.Int).Add(p, new(big.Int).Lsh(big.NewInt(1), gapBits))
	for !q.ProbablyPrime(20) {
		q.Add(q, big.NewInt(1))
	}
	return keyFromPrimes(t, p, q, 65537)
}

func keyFromPrimes(t testing.TB, p, q *big.Int, e int) *rsa.PrivateKey {
	t.Helper()
	one := big.NewInt(1)
	pm, qm := new(big.Int).Sub(p, one), new(big.Int).Sub(q, one)
	phi := new(big.Int).Mul(pm, qm)
	d := new(big.Int).ModInverse(big.NewInt(int64(e)), phi)
	if d == nil {
		t.Fatalf("e=%d is not invertible for these primes", e)
	}
	k := &rsa.PrivateKey{
		PublicKey: rsa.PublicKey{N: new(big.Int).Mul(p, q), E: e},
		D:         d,
		Primes:    []*big.Int{p, q},
	}
	k.Precompute()
	return k
}

func TestCheckRSAKey(t *testing.T) {
	good, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkRSAKey(&good.PublicKey); err != nil {
		t.Fatalf("a generated 2048-bit key was refused: %v", err)
	}
	// Primes 2^400 apart in a 2048-bit modulus: Fermat's method finds them
	// at its first step. 2^600 apart: out of its reach, so accepted.
	if err := checkRSAKey(&closePrimeKey(t, 400).PublicKey); err == nil || !strings.Contains(err.Error(), "Fermat") {
		t.Errorf("close primes: got %v, want the Fermat refusal", err)
	}
	if err := checkRSAKey(&closePrimeKey(t, 600).PublicKey); err != nil {
		t.Errorf("primes 2^600 apart were refused: %v", err)
	}

	big2047 := new(big.Int).Lsh(big.NewInt(1), 2047)
	cases := map[string]struct {
		k    rsa.PublicKey
		want string
	}{
		"e=3":         {rsa.PublicKey{N: good.N, E: 3}, "exponent"},
		"e=65539":     {rsa.PublicKey{N: good.N, E: 65539}, "exponent"},
		"even":        {rsa.PublicKey{N: new(big.Int).Add(big2047, big.NewInt(2)), E: 65537}, "even"},
		"factor 997":  {rsa.PublicKey{N: new(big.Int).Mul(big.NewInt(997), new(big.Int).Add(big2047, big.NewInt(1))), E: 65537}, "below 1000"},
		"square":      {rsa.PublicKey{N: new(big.Int).Mul(good.Primes[0], good.Primes[0]), E: 65537}, "Fermat"},
		"nil modulus": {rsa.PublicKey{E: 65537}, "not positive"},
	}
	for name, tc := range cases {
		if err := checkRSAKey(&tc.k); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error mentioning %q", name, err, tc.want)
		}
	}
}

func TestIsSquare(t *testing.T) {
	r := new(big.Int)
	for i := int64(0); i < 2000; i++ {
		root := new(big.Int).Sqrt(big.NewInt(i))
		want := root.Int64()*root.Int64() == i
		if got := isSquare(big.NewInt(i), r); got != want {
			t.Fatalf("isSquare(%d) = %v, want %v", i, got, want)
		}
	}
	x := new(big.Int).Lsh(big.NewInt(12345), 1000)
	x.Mul(x, x)
	if !isSquare(x, r) || isSquare(new(big.Int).Add(x, big.NewInt(1)), r) || isSquare(big.NewInt(-4), r) {
		t.Fatal("isSquare is wrong on large or negative numbers")
	}
}

// BenchmarkCheckRSAKey is the cost checkRSAKey adds to an RSA CSR.
func BenchmarkCheckRSAKey(b *testing.B) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := checkRSAKey(&k.PublicKey); err != nil {
			b.Fatal(err)
		}
	}
}
