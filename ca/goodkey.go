package ca

import (
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
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

// Checks on an Ed25519 subject key (RFC 8032 §5.1.3). Go's ed25519.Verify
// accepts any encoding that decodes to a curve point, including the eight
// points of small order: for those, signatures exist that verify for every
// message (for the identity point, R = identity and S = 0), so a
// certificate for such a key is a certificate anyone can sign for. A CSR's
// self-signature proves nothing about them either. An honest key is a
// multiple of the base point, canonically encoded, and never of small
// order; the checks refuse anything else:
//
//   - the encoding must be canonical: y below p, and no sign bit on a
//     point with x = 0;
//   - it must decode to a point on the curve;
//   - that point times the cofactor 8 must not be the identity.
//
// filippo.io/edwards25519 would do this; it is not a direct dependency, and
// a check run once per CSR does not need constant time, so it is done here
// with math/big in affine coordinates.

var (
	ed25519P = new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))
	// ed25519D is -121665/121666 mod p.
	ed25519D = func() *big.Int {
		d := new(big.Int).ModInverse(big.NewInt(121666), ed25519P)
		d.Mul(d, big.NewInt(-121665))
		return d.Mod(d, ed25519P)
	}()
)

// checkEd25519Key returns nil or the reason k must not be certified.
func checkEd25519Key(k ed25519.PublicKey) error {
	if len(k) != ed25519.PublicKeySize {
		return fmt.Errorf("Ed25519 public key is %d bytes, not %d", len(k), ed25519.PublicKeySize)
	}
	p := ed25519P
	le := make([]byte, len(k))
	for i := range k {
		le[len(k)-1-i] = k[i]
	}
	sign := le[0] >> 7
	le[0] &= 0x7f
	y := new(big.Int).SetBytes(le)
	if y.Cmp(p) >= 0 {
		return errors.New("Ed25519 public key is not canonically encoded (y ≥ p)")
	}
	// x² = (y² - 1) / (d·y² + 1); the denominator is never 0 (d is not a
	// square).
	y2 := new(big.Int).Mul(y, y)
	y2.Mod(y2, p)
	u := new(big.Int).Sub(y2, big.NewInt(1))
	v := new(big.Int).Mul(ed25519D, y2)
	v.Add(v, big.NewInt(1))
	v.ModInverse(v.Mod(v, p), p)
	x2 := u.Mul(u, v)
	x2.Mod(x2, p)
	x := new(big.Int).ModSqrt(x2, p)
	if x == nil {
		return errors.New("Ed25519 public key is not a point on the curve")
	}
	if x.Sign() == 0 && sign == 1 {
		return errors.New("Ed25519 public key is not canonically encoded (negative zero)")
	}
	if uint(x.Bit(0)) != uint(sign) {
		x.Sub(p, x)
	}
	for range 3 {
		x, y = edwardsDouble(x, y)
	}
	if x.Sign() == 0 && y.Cmp(big.NewInt(1)) == 0 {
		return errors.New("Ed25519 public key is a point of small order: signatures that verify for any message exist")
	}
	return nil
}

// edwardsDouble returns 2·(x, y) on edwards25519 (a = -1), by the complete
// addition law: x3 = 2xy / (1 + d·x²y²), y3 = (y² + x²) / (1 - d·x²y²).
func edwardsDouble(x, y *big.Int) (*big.Int, *big.Int) {
	p := ed25519P
	xy := new(big.Int).Mul(x, y)
	xy.Mod(xy, p)
	dxy2 := new(big.Int).Mul(xy, xy)
	dxy2.Mul(dxy2, ed25519D)
	dxy2.Mod(dxy2, p)
	one := big.NewInt(1)
	den1 := new(big.Int).Add(one, dxy2)
	den1.ModInverse(den1.Mod(den1, p), p)
	den2 := new(big.Int).Sub(one, dxy2)
	den2.ModInverse(den2.Mod(den2, p), p)
	x3 := new(big.Int).Lsh(xy, 1)
	x3.Mul(x3, den1)
	x3.Mod(x3, p)
	y3 := new(big.Int).Mul(y, y)
	y3.Add(y3, new(big.Int).Mul(x, x))
	y3.Mul(y3, den2)
	y3.Mod(y3, p)
	return x3, y3
}
