package ca_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"math/big"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/hsm"
	"github.com/hsmca/hsmca/hsm/soft"
	"github.com/hsmca/hsmca/internal/benchutil"
	"github.com/hsmca/hsmca/store"
)

// memStore is an in-memory ca.Store, used only to measure the CPU path of
// issuance without the disk (the bbolt numbers are measured next to it).
type memStore struct {
	mu   sync.Mutex
	recs map[string]ca.Record
	crl  map[string][]byte
	num  map[string]uint64
}

func newMemStore() *memStore {
	return &memStore{recs: map[string]ca.Record{}, crl: map[string][]byte{}, num: map[string]uint64{}}
}

func (m *memStore) ReserveSerial(_ context.Context, r ca.Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.recs[r.Serial]; ok {
		return ca.ErrSerialExists
	}
	m.recs[r.Serial] = r
	return nil
}

func (m *memStore) StoreIssued(_ context.Context, s string, der []byte, f []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.recs[s]
	if !ok {
		return ca.ErrUnknownSerial
	}
	r.DER, r.Final, r.CTFailures = der, true, f
	if r.Status == ca.StatusPending {
		r.Status = ca.StatusValid
	}
	m.recs[s] = r
	return nil
}

func (m *memStore) CertBySerial(_ context.Context, s string) (ca.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.recs[s]
	if !ok {
		return ca.Record{}, ca.ErrUnknownSerial
	}
	return r, nil
}

func (m *memStore) ListCerts(context.Context, ca.Query) ([]ca.Record, error) { return nil, nil }

func (m *memStore) UpdateRevocation(_ context.Context, s string, f func(*ca.Record) error) (ca.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.recs[s]
	if !ok {
		return ca.Record{}, ca.ErrUnknownSerial
	}
	if err := f(&r); err != nil {
		return ca.Record{}, err
	}
	m.recs[s] = r
	return r, nil
}

func (m *memStore) RevokedSerials(_ context.Context, issuer string) ([]ca.RevokedEntry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ca.RevokedEntry
	for _, r := range m.recs {
		if r.Issuer == issuer && r.Status == ca.StatusRevoked {
			out = append(out, ca.RevokedEntry{Serial: r.Serial, RevokedAt: r.RevokedAt, Reason: r.Reason, NotAfter: r.NotAfter})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Serial < out[j].Serial })
	return out, nil
}

func (m *memStore) NextCRLNumber(_ context.Context, issuer string) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.num[issuer]++
	return m.num[issuer], nil
}

func (m *memStore) SaveCRL(_ context.Context, issuer string, _ uint64, der []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.crl[issuer] = der
	return nil
}

func (m *memStore) LatestCRL(_ context.Context, issuer string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if d, ok := m.crl[issuer]; ok {
		return d, nil
	}
	return nil, ca.ErrNoCRL
}

// cpuMeter reports the process CPU time per operation as "cpu-ns/op"
// (user + system, every goroutine, GC included). Start it right after
// b.ResetTimer and call stop at the end of the benchmark function.
// Where process CPU time is not available, only wall time is reported.
func cpuMeter(b *testing.B) (stop func()) {
	start, err := benchutil.ProcessCPU()
	return func() {
		end, err2 := benchutil.ProcessCPU()
		if err == nil && err2 == nil && b.N > 0 {
			b.ReportMetric(float64(end-start)/float64(b.N), "cpu-ns/op")
		}
	}
}

// benchCA is a CA whose issuing key is a P-256 key in an active soft
// module partition (issue 4 measures issuance "with a soft P-256 issuer"):
// every signature goes through the partition's crypto.Signer and its audit
// log, as in `ca serve`. The bare baselines sign with a plain crypto/ecdsa
// key.
func benchCA(b *testing.B, storeKind string) *testCA {
	b.Helper()
	p := newPKIWith(b, softIssuerKey(b))
	if storeKind == "memory" {
		return newTestCAWith(b, baseConfig(), ca.Options{}, p, newMemStore(), "")
	}
	path := filepath.Join(b.TempDir(), "ca.db")
	st, err := store.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	return newTestCAWith(b, baseConfig(), ca.Options{}, p, st, path)
}

// softIssuerKey generates a P-256 key in a new soft module's partition
// (1 of 1 shares, online, activated) and returns its signer.
func softIssuerKey(b *testing.B) crypto.Signer {
	b.Helper()
	m, err := soft.Open(filepath.Join(b.TempDir(), "module"), soft.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	shares, err := m.InitPartition(hsm.InitOptions{Partition: "issuing", Shares: 1, Threshold: 1, Policy: hsm.PolicyOnline})
	if err != nil {
		b.Fatal(err)
	}
	part, err := m.Partition("issuing")
	if err != nil {
		b.Fatal(err)
	}
	if st, err := part.AddShare(shares[0]); err != nil || st.State != hsm.StateActive {
		b.Fatalf("activate the bench partition: %v (%v)", err, st.State)
	}
	k, err := part.GenerateKey(hsm.ECDSAP256, "issuing-1", false)
	if err != nil {
		b.Fatal(err)
	}
	s, err := part.Signer(k.ID)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkIssueP256 measures direct issuance (CSR → linted, stored
// certificate) with a soft P-256 issuer key, sequentially and with
// RunParallel at 2 and 8 goroutines per CPU, on the durable store (bbolt
// with its CA record log: each issuance waits for two fdatasyncs, which
// concurrent issuances share) and on an in-memory store (CPU path only).
// Compare with BenchmarkBareCreateCertificate in the same run.
func BenchmarkIssueP256(b *testing.B) {
	for _, storeKind := range []string{"bbolt", "memory"} {
		b.Run("store="+storeKind+"/seq", func(b *testing.B) {
			tc := benchCA(b, storeKind)
			req := ca.IssueRequest{CSR: makeCSR(b, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "server"}
			b.ResetTimer()
			defer cpuMeter(b)()
			for i := 0; i < b.N; i++ {
				if _, err := tc.Issue(context.Background(), req); err != nil {
					b.Fatal(err)
				}
			}
		})
		for _, par := range []int{2, 8} {
			b.Run(fmt.Sprintf("store=%s/par%d", storeKind, par), func(b *testing.B) {
				tc := benchCA(b, storeKind)
				req := ca.IssueRequest{CSR: makeCSR(b, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "server"}
				b.SetParallelism(par)
				b.ResetTimer()
				defer cpuMeter(b)()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, err := tc.Issue(context.Background(), req); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}

// BenchmarkIssueVerifiedP256 is BenchmarkIssueP256 on the durable store
// through IssueVerified, as ACME finalize issues: the CSR is parsed and its
// signature checked once by the caller (outside the loop), so each
// issuance makes one ECDSA verification (of the issuer's signature)
// instead of two.
func BenchmarkIssueVerifiedP256(b *testing.B) {
	for _, par := range []int{0, 2, 8} {
		name := "seq"
		if par > 0 {
			name = fmt.Sprintf("par%d", par)
		}
		b.Run("store=bbolt/"+name, func(b *testing.B) {
			tc := benchCA(b, "bbolt")
			req := verifiedRequest(b)
			b.ResetTimer()
			defer cpuMeter(b)()
			if par == 0 {
				for i := 0; i < b.N; i++ {
					if _, err := tc.IssueVerified(context.Background(), req); err != nil {
						b.Fatal(err)
					}
				}
				return
			}
			b.SetParallelism(par)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := tc.IssueVerified(context.Background(), req); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkBareCreateCertificate is the baseline: x509.CreateCertificate of
// a comparable leaf with the same P-256 issuer key.
func BenchmarkBareCreateCertificate(b *testing.B) {
	p := newPKI(b)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := bareTemplate()
	b.ResetTimer()
	defer cpuMeter(b)()
	for i := 0; i < b.N; i++ {
		tmpl.SerialNumber = big.NewInt(int64(i) + 1)
		if _, err := x509.CreateCertificate(rand.Reader, tmpl, p.inter, leafKey.Public(), p.interKey); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLintOnly measures the zlint pass of the server profile (default
// lint set) over one issued certificate as issuance runs it: zcrypto parse,
// then the prepared lints run directly.
func BenchmarkLintOnly(b *testing.B) {
	benchLint(b, ca.LintDERDirect)
}

// BenchmarkLintOnlyZlintEx is the same lint set run through
// zlint.LintCertificateEx (how issuance linted before), for comparison.
func BenchmarkLintOnlyZlintEx(b *testing.B) {
	benchLint(b, ca.LintDER)
}

func benchLint(b *testing.B, lintDER func(*ca.CA, string, []byte) ([]ca.LintResult, error)) {
	tc := newTestCAWith(b, baseConfig(), ca.Options{}, newPKI(b), newMemStore(), "")
	c, err := tc.Issue(context.Background(), ca.IssueRequest{CSR: makeCSR(b, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "server"})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	defer cpuMeter(b)()
	for i := 0; i < b.N; i++ {
		if res, err := lintDER(tc.CA, "server", c.DER); err != nil || len(res) > 0 {
			b.Fatal(err, res)
		}
	}
}

// BenchmarkGenerateCRL100k measures GenerateCRL for an issuer with 100,000
// revoked certificates in the bbolt store (read, build, sign, store).
func BenchmarkGenerateCRL100k(b *testing.B) {
	const n = 100_000
	st, err := store.Open(filepath.Join(b.TempDir(), "ca.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	tc := newTestCAWith(b, baseConfig(), ca.Options{}, newPKI(b), st, "")
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	var wg sync.WaitGroup
	const workers = 64
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += workers {
				err := st.ReserveSerial(ctx, ca.Record{
					Serial: fmt.Sprintf("1%036x", i+1), Issuer: "issuing-1", Profile: "server",
					Status: ca.StatusRevoked, RevokedAt: now, Reason: ca.ReasonKeyCompromise,
					NotBefore: now, NotAfter: now.Add(24 * time.Hour), DER: []byte{0},
				})
				if err != nil {
					b.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	// A parent benchmark runs once, so the fill above is not repeated
	// while the sub-benchmark scales b.N.
	b.Run("generate", func(b *testing.B) {
		var size int
		for i := 0; i < b.N; i++ {
			der, err := tc.GenerateCRL(ctx, "")
			if err != nil {
				b.Fatal(err)
			}
			size = len(der)
		}
		b.ReportMetric(float64(size)/1e6, "MB/crl")
	})
}
