package p256verify

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/asn1"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"runtime"
	"testing"
)

func genKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newKey(t testing.TB, pub *ecdsa.PublicKey, w uint) *Key {
	t.Helper()
	k, err := New(pub, w)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Every valid signature verifies, for every window width and for digests
// shorter than, equal to and longer than the order.
func TestValidSignatures(t *testing.T) {
	for w := uint(4); w <= 8; w++ {
		priv := genKey(t)
		k := newKey(t, &priv.PublicKey, w)
		for i := range 40 {
			msg := fmt.Appendf(nil, "message %d", i)
			for _, hash := range digests(msg) {
				sig, err := ecdsa.SignASN1(rand.Reader, priv, hash)
				if err != nil {
					t.Fatal(err)
				}
				if !k.VerifyASN1(hash, sig) {
					t.Fatalf("w=%d: valid signature over a %d-byte digest refused", w, len(hash))
				}
			}
		}
	}
}

func digests(msg []byte) [][]byte {
	s256 := sha256.Sum256(msg)
	s512 := sha512.Sum512(msg)
	return [][]byte{s256[:], s512[:], s256[:20], {}, {0}}
}

// Each answer for a damaged signature is crypto/ecdsa's: changed r or s,
// the other key's signature, the other message's, out-of-range values,
// the high-s twin (which ECDSA accepts), and encodings crypto/ecdsa
// refuses.
func TestAgreesWithCryptoECDSA(t *testing.T) {
	priv := genKey(t)
	other := genKey(t)
	k := newKey(t, &priv.PublicKey, 4)
	n := elliptic.P256().Params().N
	hash := sha256.Sum256([]byte("hsmca"))
	otherHash := sha256.Sum256([]byte("hsmcb"))
	r, s, err := ecdsa.Sign(rand.Reader, priv, hash[:])
	if err != nil {
		t.Fatal(err)
	}
	or, os, _ := ecdsa.Sign(rand.Reader, other, hash[:])
	add := func(a *big.Int, d int64) *big.Int { return new(big.Int).Add(a, big.NewInt(d)) }
	cases := []struct {
		name string
		hash []byte
		r, s *big.Int
		want bool
	}{
		{"valid", hash[:], r, s, true},
		{"high s", hash[:], r, new(big.Int).Sub(n, s), true},
		{"r+1", hash[:], add(r, 1), s, false},
		{"s+1", hash[:], r, add(s, 1), false},
		{"swapped", hash[:], s, r, false},
		{"other key", hash[:], or, os, false},
		{"other message", otherHash[:], r, s, false},
		{"r=0", hash[:], big.NewInt(0), s, false},
		{"s=0", hash[:], r, big.NewInt(0), false},
		{"r=n", hash[:], n, s, false},
		{"s=n", hash[:], r, n, false},
		{"r+n", hash[:], new(big.Int).Add(r, n), s, false},
		{"r=-r", hash[:], new(big.Int).Neg(r), s, false},
		{"r=1 s=1", hash[:], big.NewInt(1), big.NewInt(1), false},
		{"r=n-1 s=n-1", hash[:], add(n, -1), add(n, -1), false},
	}
	for _, c := range cases {
		std := ecdsa.Verify(&priv.PublicKey, c.hash, c.r, c.s)
		if std != c.want {
			t.Fatalf("%s: crypto/ecdsa says %v, the test expects %v", c.name, std, c.want)
		}
		if got := k.Verify(c.hash, c.r, c.s); got != std {
			t.Errorf("%s: Verify = %v, crypto/ecdsa = %v", c.name, got, std)
		}
		if c.r.Sign() < 0 {
			continue // no DER form crypto/ecdsa would produce
		}
		der, err := asn1.Marshal(struct{ R, S *big.Int }{c.r, c.s})
		if err != nil {
			t.Fatal(err)
		}
		if got, std := k.VerifyASN1(c.hash, der), ecdsa.VerifyASN1(&priv.PublicKey, c.hash, der); got != std {
			t.Errorf("%s (DER): VerifyASN1 = %v, crypto/ecdsa = %v", c.name, got, std)
		}
	}
	der, _ := ecdsa.SignASN1(rand.Reader, priv, hash[:])
	for _, bad := range [][]byte{nil, {}, der[:len(der)-1], append(append([]byte{}, der...), 0), {0x30, 0x00}} {
		if got, std := k.VerifyASN1(hash[:], bad), ecdsa.VerifyASN1(&priv.PublicKey, hash[:], bad); got != std {
			t.Errorf("malformed % x: VerifyASN1 = %v, crypto/ecdsa = %v", bad, got, std)
		}
	}
}

// Random single-bit flips of valid signatures and digests, against
// crypto/ecdsa.
func TestRandomDamage(t *testing.T) {
	rng := mrand.New(mrand.NewPCG(1, 2))
	priv := genKey(t)
	k := newKey(t, &priv.PublicKey, 5)
	for i := range 300 {
		hash := sha256.Sum256(fmt.Appendf(nil, "%d", i))
		sig, err := ecdsa.SignASN1(rand.Reader, priv, hash[:])
		if err != nil {
			t.Fatal(err)
		}
		h := hash[:]
		if i%2 == 0 {
			bit := rng.IntN(len(sig) * 8)
			sig[bit/8] ^= 1 << (bit % 8)
		} else {
			bit := rng.IntN(len(h) * 8)
			h[bit/8] ^= 1 << (bit % 8)
		}
		if got, std := k.VerifyASN1(h, sig), ecdsa.VerifyASN1(&priv.PublicKey, h, sig); got != std {
			t.Fatalf("case %d: VerifyASN1 = %v, crypto/ecdsa = %v", i, got, std)
		}
	}
}

// The table's multiples are the key's: u·Q from the table equals
// crypto/elliptic's scalar multiplication, for random and edge scalars.
func TestTableMultiples(t *testing.T) {
	priv := genKey(t)
	for _, w := range []uint{4, 7} {
		k := newKey(t, &priv.PublicKey, w)
		scalars := [][]byte{make([]byte, 32), append(make([]byte, 31), 1), n.FillBytes(make([]byte, 32))}
		ones := make([]byte, 32)
		for i := range ones {
			ones[i] = 0xff
		}
		scalars = append(scalars, ones)
		for range 20 {
			u := make([]byte, 32)
			rand.Read(u)
			scalars = append(scalars, u)
		}
		for _, u := range scalars {
			x, y := elliptic.P256().ScalarMult(priv.X, priv.Y, u) //nolint:staticcheck // reference only
			got := k.mul(u).Bytes()
			if x.Sign() == 0 && y.Sign() == 0 {
				if len(got) != 1 || got[0] != 0 {
					t.Fatalf("w=%d u=%x: want the point at infinity, got %x", w, u, got)
				}
				continue
			}
			want := append([]byte{4}, append(x.FillBytes(make([]byte, 32)), y.FillBytes(make([]byte, 32))...)...)
			if string(got) != string(want) {
				t.Fatalf("w=%d u=%x: table product differs from ScalarMult", w, u)
			}
		}
	}
}

func TestNewRefuses(t *testing.T) {
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(&p384.PublicKey, 4); err == nil {
		t.Error("a P-384 key was accepted")
	}
	priv := genKey(t)
	if _, err := New(&priv.PublicKey, 3); err == nil {
		t.Error("a 3-bit window was accepted")
	}
	if _, err := New(nil, 4); err == nil {
		t.Error("a nil key was accepted")
	}
	off := &ecdsa.PublicKey{Curve: elliptic.P256(), X: new(big.Int).Add(priv.X, big.NewInt(1)), Y: priv.Y}
	if _, err := New(off, 4); err == nil {
		t.Error("a point off the curve was accepted")
	}
}

// FuzzVerifyASN1 feeds arbitrary digests and signature bytes to
// VerifyASN1 and compares every answer with crypto/ecdsa's, for a fixed
// key whose valid signatures seed the corpus.
func FuzzVerifyASN1(f *testing.F) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	k, err := New(&priv.PublicKey, 4)
	if err != nil {
		f.Fatal(err)
	}
	for i := range 4 {
		hash := sha256.Sum256([]byte{byte(i)})
		sig, err := ecdsa.SignASN1(rand.Reader, priv, hash[:])
		if err != nil {
			f.Fatal(err)
		}
		f.Add(hash[:], sig)
	}
	f.Add([]byte{}, []byte{0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01})
	f.Fuzz(func(t *testing.T, hash, sig []byte) {
		if got, std := k.VerifyASN1(hash, sig), ecdsa.VerifyASN1(&priv.PublicKey, hash, sig); got != std {
			t.Fatalf("VerifyASN1 = %v, crypto/ecdsa = %v", got, std)
		}
	})
}

// BenchmarkVerify compares one verification through a Key (4- and 6-bit
// windows) with crypto/ecdsa's on the same key and signature, in the same
// run; BenchmarkNew is the one-time cost of the table.
func BenchmarkVerify(b *testing.B) {
	priv := genKey(b)
	hash := sha256.Sum256([]byte("benchmark"))
	sig, err := ecdsa.SignASN1(rand.Reader, priv, hash[:])
	if err != nil {
		b.Fatal(err)
	}
	b.Run("ecdsa", func(b *testing.B) {
		for b.Loop() {
			if !ecdsa.VerifyASN1(&priv.PublicKey, hash[:], sig) {
				b.Fatal("refused")
			}
		}
	})
	for _, w := range []uint{4, 6} {
		k := newKey(b, &priv.PublicKey, w)
		b.Run(fmt.Sprintf("table-w%d", w), func(b *testing.B) {
			for b.Loop() {
				if !k.VerifyASN1(hash[:], sig) {
					b.Fatal("refused")
				}
			}
		})
	}
}

func BenchmarkNew(b *testing.B) {
	priv := genKey(b)
	for _, w := range []uint{4, 6} {
		b.Run(fmt.Sprintf("w%d", w), func(b *testing.B) {
			for b.Loop() {
				newKey(b, &priv.PublicKey, w)
			}
		})
	}
}

// nistec's points are plain coordinates, so on Unix tables go outside the
// heap; each Key verifies while its table is mapped, and collecting
// earlier Keys (which unmaps their tables) does not disturb later ones.
func TestTableOffHeap(t *testing.T) {
	if !pointsOffHeap {
		t.Skip("tables stay on the Go heap here")
	}
	priv := genKey(t)
	hash := sha256.Sum256([]byte("off heap"))
	for range 50 {
		k := newKey(t, &priv.PublicKey, 4)
		sig, err := ecdsa.SignASN1(rand.Reader, priv, hash[:])
		if err != nil {
			t.Fatal(err)
		}
		if !k.VerifyASN1(hash[:], sig) {
			t.Fatal("valid signature refused")
		}
		runtime.GC()
	}
}
