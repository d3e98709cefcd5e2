package ca

import (
	"crypto/rsa"
	"errors"
	"math/big"
	"sync"
)

// Checks on an RSA subject key beyond its size, which the profile's
// allowed key types already fix. The lints see the certificate, not the
// arithmetic of its key, so without these a CSR could get a certificate
// for a key anyone can factor or whose exponent breaks textbook
// assumptions:
//
//   - the public exponent must be 65537: RSA with e = 3 is fragile, a
//     large or even exponent is a mistake, and the CA/Browser Forum's
//     Baseline Requirements §6.1.6 ask for an odd e of at least 2^16+1;
//     every key generator in use picks 65537;
//   - the modulus must be odd and have no prime factor below 1000 (a
//     modulus with a small factor is broken by trial division);
//   - its two primes must not be so close that Fermat's method finds them
//     in a few steps (a known flaw of some key generators: primes taken
//     near each other; see CVE-2022-26320).

// rsaFermatRounds is how many steps of Fermat's method checkRSAKey takes.
// A key generator that picks its primes independently leaves them at
// least 2^500 apart for a 2048-bit modulus, far beyond any number of steps
// from √N; keys that fail are those whose primes share their upper half.
const rsaFermatRounds = 100

var smallPrimes = sync.OnceValue(func() *big.Int {
	// The product of the primes below 1000.
	p := big.NewInt(1)
	for n := int64(2); n < 1000; n++ {
		if big.NewInt(n).ProbablyPrime(0) {
			p.Mul(p, big.NewInt(n))
		}
	}
	return p
})

// checkRSAKey returns nil or the reason k must not be certified.
func checkRSAKey(k *rsa.PublicKey) error {
	if k.E != 65537 {
		return errors.New("RSA public exponent must be 65537")
	}
	n := k.N
	if n == nil || n.Sign() <= 0 || n.Bit(0) == 0 {
		return errors.New("RSA modulus is even or not positive")
	}
	if new(big.Int).GCD(nil, nil, n, smallPrimes()).Cmp(big.NewInt(1)) != 0 {
		return errors.New("RSA modulus has a prime factor below 1000")
	}
	if fermatFactor(n, rsaFermatRounds) {
		return errors.New("RSA modulus is the product of two primes close enough to find by Fermat's method")
	}
	return nil
}

// fermatFactor reports whether Fermat's method factors the odd number n
// within rounds steps: whether a² - n is a perfect square for one of
// a = ⌈√n⌉, ⌈√n⌉+1, ..., which is the case when n = p·q with p and q
// close (a = (p+q)/2, b = (q-p)/2).
func fermatFactor(n *big.Int, rounds int) bool {
	a := new(big.Int).Sqrt(n)
	sq := new(big.Int).Mul(a, a)
	if sq.Cmp(n) == 0 {
		return true // n is a square
	}
	// b2 = a² - n for a = ⌊√n⌋+1; then (a+1)² - n = b2 + 2a + 1, so each
	// step is two additions, not a multiplication.
	a.Add(a, big.NewInt(1))
	b2 := new(big.Int).Mul(a, a)
	b2.Sub(b2, n)
	step := new(big.Int).Lsh(a, 1)
	step.Add(step, big.NewInt(1)) // 2a + 1
	two := big.NewInt(2)
	r := new(big.Int)
	for range rounds {
		if isSquare(b2, r) {
			return true
		}
		b2.Add(b2, step)
		step.Add(step, two)
	}
	return false
}

// isSquare reports whether x ≥ 0 is a perfect square; r is scratch space.
// A square is a square modulo any m, and only a few residues modulo 64,
// 63, 65 and 11 are squares, so those rule out all but about one number
// in 120 before the (costly) square root is taken.
func isSquare(x, r *big.Int) bool {
	switch x.Sign() {
	case -1:
		return false
	case 0:
		return true
	}
	if !squares64[x.Bits()[0]&63] {
		return false
	}
	v := r.Mod(x, big.NewInt(63*65*11)).Uint64()
	if !squares63[v%63] || !squares65[v%65] || !squares11[v%11] {
		return false
	}
	r.Sqrt(x)
	r.Mul(r, r)
	return r.Cmp(x) == 0
}

// squaresM[i] says whether i is a square modulo M, for the moduli
// isSquare uses.
var (
	squares64 = squaresMod(64)
	squares63 = squaresMod(63)
	squares65 = squaresMod(65)
	squares11 = squaresMod(11)
)

func squaresMod(m uint64) []bool {
	t := make([]bool, m)
	for i := range m {
		t[i*i%m] = true
	}
	return t
}
