// Package p256verify verifies ECDSA P-256 signatures under a public key
// that verifies many of them: an issuer key that checks every certificate
// it signs, an ACME account key that signs every request of its client.
//
// crypto/ecdsa computes u1·G + u2·Q for each signature; G's multiples are
// precomputed in the standard library, Q's are not, so u2·Q (a full
// variable-base scalar multiplication, about 64 µs on the 2-core build VM)
// is most of a verification (about 104 µs). A Key precomputes, once,
// d·2^(w·i)·Q for every w-bit digit d and window i; u2·Q is then one point
// addition per window. With w = 4 that is 64 additions (about 33 µs) and a
// table of 960 points (92 KiB) that takes about 0.6 ms to build; with
// w = 6, 43 additions and 260 KiB.
//
// Only public values enter the computation (the key, the signature and the
// digest), so it need not run in constant time. The point arithmetic is
// filippo.io/nistec's (the standard library's own P-256 code, exported);
// this package only arranges it, and its tests check every answer against
// crypto/ecdsa.
package p256verify

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"errors"
	"math/big"
	"runtime"

	"filippo.io/nistec"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// n is the order of P-256's base point.
var n = elliptic.P256().Params().N

// Key verifies signatures under one P-256 public key. It is safe for
// concurrent use. Use it through the pointer New returns and do not copy
// the struct: its table may live outside the Go heap and is released when
// that Key is collected.
type Key struct {
	w     uint
	table []nistec.P256Point // window i, digit d ≥ 1 at i*(2^w-1) + d-1
}

// New precomputes the multiples of pub with windows of w bits (4 to 8).
func New(pub *ecdsa.PublicKey, w uint) (*Key, error) {
	if pub == nil || pub.Curve != elliptic.P256() {
		return nil, errors.New("p256verify: not a P-256 public key")
	}
	if w < 4 || w > 8 {
		return nil, errors.New("p256verify: window must be 4 to 8 bits")
	}
	enc, err := pub.Bytes() // uncompressed point; fails off the curve
	if err != nil {
		return nil, err
	}
	base, err := nistec.NewP256Point().SetBytes(enc) // checks it is on the curve
	if err != nil {
		return nil, err
	}
	digits := 1<<w - 1
	windows := (256 + int(w) - 1) / int(w)
	k := &Key{w: w}
	allocTable(k, windows*digits)
	for i := range windows {
		row := k.table[i*digits : (i+1)*digits]
		row[0].Set(base)
		for d := 1; d < digits; d++ {
			row[d].Add(&row[d-1], base)
		}
		// The next window's base is 2^w times this one's.
		for range w {
			base.Double(base)
		}
	}
	return k, nil
}

// VerifyASN1 reports whether sig, an ASN.1 DER ECDSA-Sig-Value, is a valid
// signature of hash under the key, as ecdsa.VerifyASN1 would.
func (k *Key) VerifyASN1(hash, sig []byte) bool {
	// Read into []byte, ReadASN1Integer refuses a negative INTEGER and a
	// non-minimal encoding, as crypto/ecdsa's parser does.
	var r, s []byte
	in := cryptobyte.String(sig)
	var inner cryptobyte.String
	if !in.ReadASN1(&inner, cbasn1.SEQUENCE) || !in.Empty() ||
		!inner.ReadASN1Integer(&r) || !inner.ReadASN1Integer(&s) || !inner.Empty() {
		return false
	}
	return k.Verify(hash, new(big.Int).SetBytes(r), new(big.Int).SetBytes(s))
}

// Verify reports whether (r, s) is a valid signature of hash under the
// key, as ecdsa.Verify would.
func (k *Key) Verify(hash []byte, r, s *big.Int) bool {
	if r.Sign() <= 0 || s.Sign() <= 0 || r.Cmp(n) >= 0 || s.Cmp(n) >= 0 {
		return false
	}
	e := hashToInt(hash)
	w := new(big.Int).ModInverse(s, n)
	if w == nil {
		return false
	}
	u1 := new(big.Int).Mul(e, w)
	u1.Mod(u1, n)
	u2 := new(big.Int).Mul(r, w)
	u2.Mod(u2, n)

	var buf [32]byte
	p, err := nistec.NewP256Point().ScalarBaseMult(u1.FillBytes(buf[:]))
	if err != nil {
		return false
	}
	p.Add(p, k.mul(u2.FillBytes(buf[:])))
	x, err := p.BytesX() // fails for the point at infinity
	if err != nil {
		return false
	}
	v := new(big.Int).SetBytes(x)
	v.Mod(v, n)
	return v.Cmp(r) == 0
}

// mul returns u·Q for the 32-byte big-endian scalar u, one addition per
// non-zero digit.
func (k *Key) mul(u []byte) *nistec.P256Point {
	acc := nistec.NewP256Point() // the point at infinity
	digits := 1<<k.w - 1
	windows := len(k.table) / digits
	for i := range windows {
		if d := digit(u, uint(i)*k.w, k.w); d != 0 {
			acc.Add(acc, &k.table[i*digits+d-1])
		}
	}
	// The table may be mapped outside the Go heap and unmapped by k's
	// cleanup once k is unreachable; k must stay reachable until the last
	// read of the table, whatever the compiler makes of the loop.
	runtime.KeepAlive(k)
	return acc
}

// digit returns the w bits of the big-endian u that start at bit pos,
// counted from the least significant; bits past the top read as zero.
func digit(u []byte, pos, w uint) int {
	d := 0
	for b := range w {
		bit := pos + b
		if bit >= uint(len(u))*8 {
			break
		}
		by := u[len(u)-1-int(bit/8)]
		d |= int(by>>(bit%8)&1) << b
	}
	return d
}

// hashToInt converts hash to an integer as FIPS 186-5 §6.4.2 does for
// P-256: its leftmost 256 bits, reduced modulo n.
func hashToInt(hash []byte) *big.Int {
	if len(hash) > 32 {
		hash = hash[:32]
	}
	e := new(big.Int).SetBytes(hash)
	return e.Mod(e, n)
}
