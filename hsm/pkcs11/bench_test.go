//go:build cgo

package pkcs11

import (
	"crypto"
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hsmca/hsmca/hsm"
)

// The benchmarks compare signatures per second through the partition's
// crypto.Signer (state check, audit record committed before the signature
// is released, token-loss detection) with crypto11 used directly on the
// same key handle, in the same process, at 1 and 2 goroutines.
//
//	go test -run '^$' -bench Sign -benchtime 3s ./hsm/pkcs11
//
// The wrapper's cost is the ratio of the "sigs/s" metrics of wrapper and
// direct for the same key and goroutine count. Every signature waits for
// its audit record to be durable (one fsync per group commit), so on a
// disk the wrapper at one goroutine runs at the disk's fsync rate;
// "wrapper-nofsync" is the same path without the fsync, which isolates the
// wrapper's own cost, and g16 shows the group commit amortizing the fsync.

type benchKeys struct {
	mod     *Module
	wrapped map[string]crypto.Signer
	direct  map[string]crypto.Signer
	err     error
}

var (
	benchOnce sync.Once
	benchFix  benchKeys
)

func benchFixture(b *testing.B) *benchKeys {
	b.Helper()
	needSoftHSM(b)
	benchOnce.Do(func() {
		f := &benchFix
		mod, shares, err := InitModule(filepath.Join(testRoot, "bench-module"), Options{},
			hsm.InitOptions{Partition: "issuing", Shares: 1, Threshold: 1}, tokenURI(tokBench), []byte(userPIN))
		if err != nil {
			f.err = err
			return
		}
		f.mod = mod.(*Module)
		part, _ := f.mod.TokenPartition("issuing")
		if _, f.err = part.AddShare(shares[0]); f.err != nil {
			return
		}
		f.wrapped, f.direct = map[string]crypto.Signer{}, map[string]crypto.Signer{}
		for name, typ := range map[string]hsm.KeyType{"P256": hsm.ECDSAP256, "RSA2048": hsm.RSA2048} {
			k, err := part.GenerateKey(typ, "bench-"+name, false)
			if err != nil {
				f.err = err
				return
			}
			if f.wrapped[name], f.err = part.Signer(k.ID); f.err != nil {
				return
			}
			if f.direct[name], f.err = part.testDirectSigner(k.ID); f.err != nil {
				return
			}
		}
	})
	if benchFix.err != nil {
		b.Fatal(benchFix.err)
	}
	return &benchFix
}

func closeBenchFixture() {
	if benchFix.mod != nil {
		benchFix.mod.Close()
	}
}

func BenchmarkSign(b *testing.B) {
	digest := sha256.Sum256([]byte("benchmark"))
	for _, key := range []string{"P256", "RSA2048"} {
		for _, g := range []int{1, 2, 16} {
			for _, kind := range []string{"direct", "wrapper", "wrapper-nofsync"} {
				b.Run(fmt.Sprintf("%s/%s/g%d", key, kind, g), func(b *testing.B) {
					f := benchFixture(b)
					s := f.wrapped[key]
					switch kind {
					case "direct":
						s = f.direct[key]
					case "wrapper-nofsync":
						// Same code path; only the audit commit's fsync is
						// skipped, to show what the wrapper costs apart
						// from the disk.
						f.mod.testSetAuditNoSync(true)
						defer f.mod.testSetAuditNoSync(false)
					}
					signParallel(b, s, g, digest[:])
				})
			}
		}
	}
}

// signParallel makes b.N signatures with g goroutines and reports sigs/s.
func signParallel(b *testing.B, s crypto.Signer, g int, digest []byte) {
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for range g {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if _, err := s.Sign(nil, digest, crypto.SHA256); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sigs/s")
}

// BenchmarkAuditAppend is the cost of one durable audit record alone
// (Append = Begin + Wait), with and without fsync, to read next to
// BenchmarkSign: a wrapped signature costs about max(sign, audit commit).
func BenchmarkAuditAppend(b *testing.B) {
	for _, nosync := range []bool{false, true} {
		name := "fsync"
		if nosync {
			name = "nofsync"
		}
		b.Run(name, func(b *testing.B) {
			f := benchFixture(b)
			f.mod.testSetAuditNoSync(nosync)
			defer f.mod.testSetAuditNoSync(false)
			fields := map[string]string{"key": "bench", "digest": "00", "hash": "SHA-256"}
			b.ResetTimer()
			for range b.N {
				if _, err := f.mod.log.Append("bench", "issuing", fields); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
