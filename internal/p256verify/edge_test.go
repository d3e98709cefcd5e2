package p256verify

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"math/big"
	"runtime"
	"sync"
	"testing"
)

// The table multiplication agrees with crypto/elliptic at the scalars
// where windowed code goes wrong: zero, one, n-1, single high bits, all
// ones (past n, as u1 and u2 never are, but mul must still be right).
func TestMulEdgeScalars(t *testing.T) {
	c := elliptic.P256()
	priv := genKey(t)
	one := big.NewInt(1)
	scalars := []*big.Int{
		new(big.Int),
		one,
		new(big.Int).Sub(n, one),
		new(big.Int).Lsh(one, 252),
		new(big.Int).Lsh(one, 255),
		new(big.Int).Sub(new(big.Int).Lsh(one, 256), one),
	}
	for _, w := range []uint{4, 6} {
		k := newKey(t, &priv.PublicKey, w)
		for _, u := range scalars {
			b := u.FillBytes(make([]byte, 32))
			x, y := c.ScalarMult(priv.X, priv.Y, b)
			want := elliptic.Marshal(c, x, y)
			if x.Sign() == 0 && y.Sign() == 0 {
				want = []byte{0} // the point at infinity, as nistec encodes it
			}
			if got := k.mul(b).Bytes(); string(got) != string(want) {
				t.Errorf("w=%d: mul(%x) differs from crypto/elliptic", w, b)
			}
		}
	}
}

// Verification cases whose intermediate values are special: u1·G = u2·Q,
// so that the final sum is a doubling; and e ≡ 0 mod n, from a digest
// equal to n and from a longer digest whose leftmost 32 bytes are n.
func TestVerifySpecialValues(t *testing.T) {
	c := elliptic.P256()
	priv := genKey(t)
	for _, w := range []uint{4, 6} {
		k := newKey(t, &priv.PublicKey, w)
		// Pick a nonce kk and e = r·d; then s = 2e/kk gives u1 = e/s = kk/2
		// and u2 = r/s = kk/(2d), so u1·G = u2·Q = (kk/2)·G.
		kk, err := rand.Int(rand.Reader, n)
		if err != nil || kk.Sign() == 0 {
			t.Fatal("nonce", err)
		}
		rx, _ := c.ScalarBaseMult(kk.FillBytes(make([]byte, 32)))
		r := new(big.Int).Mod(rx, n)
		e := new(big.Int).Mod(new(big.Int).Mul(r, priv.D), n)
		s := new(big.Int).Mul(new(big.Int).Lsh(e, 1), new(big.Int).ModInverse(kk, n))
		s.Mod(s, n)
		h := e.FillBytes(make([]byte, 32))
		if std, got := ecdsa.Verify(&priv.PublicKey, h, r, s), k.Verify(h, r, s); !std || !got {
			t.Errorf("w=%d doubling case: crypto/ecdsa %v, table %v; want both true", w, std, got)
		}
		for _, h := range [][]byte{n.FillBytes(make([]byte, 32)), append(n.FillBytes(make([]byte, 32)), make([]byte, 16)...)} {
			r, s, err := ecdsa.Sign(rand.Reader, priv, h)
			if err != nil {
				t.Fatal(err)
			}
			if !k.Verify(h, r, s) {
				t.Errorf("w=%d: e = 0 (digest %d bytes): valid signature refused", w, len(h))
			}
			if k.Verify(h, s, r) != ecdsa.Verify(&priv.PublicKey, h, s, r) {
				t.Errorf("w=%d: e = 0 (digest %d bytes): swapped r and s judged differently from crypto/ecdsa", w, len(h))
			}
		}
	}
}

// One Key serves many goroutines at once (Verify only reads its table)
// while other Keys are built and dropped and the collector runs, so that
// their tables are unmapped by cleanups meanwhile. Run under -race by
// make test.
func TestConcurrentUseWhileTablesAreFreed(t *testing.T) {
	priv := genKey(t)
	shared := newKey(t, &priv.PublicKey, 4)
	hash := sha256.Sum256([]byte("hsmca"))
	sig, err := ecdsa.SignASN1(rand.Reader, priv, hash[:])
	if err != nil {
		t.Fatal(err)
	}
	other := sha256.Sum256([]byte("other"))
	stop := make(chan struct{})
	gcDone := make(chan struct{})
	go func() {
		defer close(gcDone)
		for {
			select {
			case <-stop:
				return
			default:
				runtime.GC()
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 100 {
				k := shared
				if g%2 == 0 && i%5 == 0 {
					var err error
					if k, err = New(&priv.PublicKey, 4); err != nil { // dropped after this round
						errs <- err.Error()
						return
					}
				}
				if !k.VerifyASN1(hash[:], sig) {
					errs <- "valid signature refused"
					return
				}
				if k.VerifyASN1(other[:], sig) {
					errs <- "signature over other bytes accepted"
					return
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	<-gcDone
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}
