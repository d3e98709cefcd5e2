package store

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/hsmca/hsmca/ca"
)

func openTemp(t testing.TB) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hsmca.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func rec(serial, issuer string, notAfter time.Time) ca.Record {
	return ca.Record{
		Serial: serial, Issuer: issuer, Profile: "server", Status: ca.StatusPending,
		DER: []byte("linted-" + serial), Names: []string{"a.svc.corp"},
		NotBefore: notAfter.Add(-time.Hour), NotAfter: notAfter, Created: time.Unix(1, 0).UTC(),
	}
}

func TestCAReserveAndIssue(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	na := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := s.ReserveSerial(ctx, rec("1a", "i1", na)); err != nil {
		t.Fatal(err)
	}
	if err := s.ReserveSerial(ctx, rec("1a", "i2", na)); !errors.Is(err, ca.ErrSerialExists) {
		t.Fatalf("second reservation: %v", err)
	}
	r, err := s.CertBySerial(ctx, "1a")
	if err != nil || r.Status != ca.StatusPending || r.Final || string(r.DER) != "linted-1a" || r.Issuer != "i1" || !r.NotAfter.Equal(na) {
		t.Fatalf("pending record %+v %v", r, err)
	}
	if err := s.StoreIssued(ctx, "1a", []byte("final"), []string{"log A down"}); err != nil {
		t.Fatal(err)
	}
	r, _ = s.CertBySerial(ctx, "1a")
	if r.Status != ca.StatusValid || !r.Final || string(r.DER) != "final" || len(r.CTFailures) != 1 {
		t.Fatalf("issued record %+v", r)
	}
	if err := s.StoreIssued(ctx, "ff", []byte("x"), nil); !errors.Is(err, ca.ErrUnknownSerial) {
		t.Errorf("StoreIssued unknown: %v", err)
	}
	if _, err := s.CertBySerial(ctx, "ff"); !errors.Is(err, ca.ErrUnknownSerial) {
		t.Errorf("CertBySerial unknown: %v", err)
	}
}

// TestCARefusedRecord: a record marked refused (the lints refused its
// copy after it was recorded) keeps its serial, survives a reopen, takes
// no final certificate and stays out of the revoked index.
func TestCARefusedRecord(t *testing.T) {
	s, path := openTemp(t)
	ctx := context.Background()
	na := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := s.ReserveSerial(ctx, rec("2b", "i1", na)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateRevocation(ctx, "2b", func(r *ca.Record) error { r.Status = ca.StatusRefused; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.StoreIssued(ctx, "2b", []byte("final"), nil); err == nil {
		t.Error("StoreIssued stored a final certificate on a refused record")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	r, err := s2.CertBySerial(ctx, "2b")
	if err != nil || r.Status != ca.StatusRefused || r.Final || string(r.DER) != "linted-2b" {
		t.Fatalf("refused record after reopen: %+v, %v", r, err)
	}
	if err := s2.ReserveSerial(ctx, rec("2b", "i1", na)); !errors.Is(err, ca.ErrSerialExists) {
		t.Errorf("refused serial reserved again: %v", err)
	}
	if rev, err := s2.RevokedSerials(ctx, "i1"); err != nil || len(rev) != 0 {
		t.Errorf("revoked index holds %d entries, %v", len(rev), err)
	}
}

func TestCARevocationIndex(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	na := time.Now().Add(time.Hour).UTC()
	for _, sn := range []string{"10", "11", "12"} {
		if err := s.ReserveSerial(ctx, rec(sn, "i1", na)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.ReserveSerial(ctx, rec("20", "i2", na)); err != nil {
		t.Fatal(err)
	}
	at := time.Unix(1700000000, 0).UTC()
	revoke := func(r *ca.Record) error { r.Status, r.RevokedAt, r.Reason = ca.StatusRevoked, at, 1; return nil }
	for _, sn := range []string{"11", "20"} {
		if _, err := s.UpdateRevocation(ctx, sn, revoke); err != nil {
			t.Fatal(err)
		}
	}
	// An update that fails changes nothing.
	boom := errors.New("refused")
	if _, err := s.UpdateRevocation(ctx, "12", func(r *ca.Record) error { r.Status = ca.StatusRevoked; return boom }); !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if _, err := s.UpdateRevocation(ctx, "99", revoke); !errors.Is(err, ca.ErrUnknownSerial) {
		t.Errorf("unknown serial: %v", err)
	}
	got, err := s.RevokedSerials(ctx, "i1")
	if err != nil || len(got) != 1 || got[0].Serial != "11" || got[0].Reason != 1 || !got[0].RevokedAt.Equal(at) || !got[0].NotAfter.Equal(na) {
		t.Fatalf("revoked i1: %+v %v", got, err)
	}
	if r, _ := s.CertBySerial(ctx, "12"); r.Status != ca.StatusPending {
		t.Errorf("failed update leaked: %s", r.Status)
	}
	// Taking it off the list removes the index entry.
	if _, err := s.UpdateRevocation(ctx, "11", func(r *ca.Record) error { r.Status, r.Reason = ca.StatusValid, 0; return nil }); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.RevokedSerials(ctx, "i1"); len(got) != 0 {
		t.Errorf("index after unrevoke: %+v", got)
	}
	if got, _ := s.RevokedSerials(ctx, "i2"); len(got) != 1 {
		t.Errorf("revoked i2: %+v", got)
	}
}

func TestCAListCerts(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	base := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 20; i++ {
		r := rec(fmt.Sprintf("1%02x", i), []string{"i1", "i2"}[i%2], base.Add(time.Duration(i)*24*time.Hour))
		if err := s.ReserveSerial(ctx, r); err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 {
			if err := s.StoreIssued(ctx, r.Serial, []byte("final"), nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	count := func(q ca.Query) int {
		l, err := s.ListCerts(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		return len(l)
	}
	if n := count(ca.Query{}); n != 20 {
		t.Errorf("all: %d", n)
	}
	if n := count(ca.Query{Issuer: "i1"}); n != 10 {
		t.Errorf("i1: %d", n)
	}
	if n := count(ca.Query{Status: []ca.Status{ca.StatusValid}}); n != 7 {
		t.Errorf("valid: %d", n)
	}
	if n := count(ca.Query{NotAfterAfter: base.Add(time.Hour), NotAfterBefore: base.Add(5 * 24 * time.Hour)}); n != 4 {
		t.Errorf("expiring window: %d", n)
	}
	// Paging visits every record once.
	seen := map[string]bool{}
	after := ""
	for page := 0; page < 10; page++ {
		l, err := s.ListCerts(ctx, ca.Query{After: after, Limit: 6})
		if err != nil {
			t.Fatal(err)
		}
		if len(l) == 0 {
			break
		}
		for _, r := range l {
			if seen[r.Serial] {
				t.Fatalf("serial %s on two pages", r.Serial)
			}
			seen[r.Serial] = true
		}
		after = l[len(l)-1].Serial
	}
	if len(seen) != 20 {
		t.Errorf("paging saw %d records", len(seen))
	}
}

func TestCACRLNumberAndLatest(t *testing.T) {
	s, path := openTemp(t)
	ctx := context.Background()
	if _, err := s.LatestCRL(ctx, "i1"); !errors.Is(err, ca.ErrNoCRL) {
		t.Errorf("before first CRL: %v", err)
	}
	var last uint64
	for i := 0; i < 3; i++ {
		n, err := s.NextCRLNumber(ctx, "i1")
		if err != nil || n <= last {
			t.Fatalf("CRL number %d after %d: %v", n, last, err)
		}
		last = n
		if err := s.SaveCRL(ctx, "i1", n, []byte(fmt.Sprint("crl", n))); err != nil {
			t.Fatal(err)
		}
	}
	// An older CRL never replaces a newer one.
	if err := s.SaveCRL(ctx, "i1", 1, []byte("old")); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.LatestCRL(ctx, "i1"); string(got) != "crl3" {
		t.Errorf("latest CRL %q", got)
	}
	if n, _ := s.NextCRLNumber(ctx, "i2"); n != 1 {
		t.Errorf("other issuer starts at %d", n)
	}
	s.Close()
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if n, _ := s2.NextCRLNumber(ctx, "i1"); n != last+1 {
		t.Errorf("after reopen: %d, want %d", n, last+1)
	}
}

func TestCAConcurrentReservations(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	const workers, each = 8, 50
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := map[string]int{}
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				// Every worker races for the same serials.
				sn := fmt.Sprintf("%x", 0x1000+i)
				err := s.ReserveSerial(ctx, rec(sn, "i1", time.Now()))
				if err != nil && !errors.Is(err, ca.ErrSerialExists) {
					t.Error(err)
					return
				}
				if err == nil {
					mu.Lock()
					wins[sn]++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if len(wins) != each {
		t.Fatalf("%d serials reserved, want %d", len(wins), each)
	}
	for sn, n := range wins {
		if n != 1 {
			t.Errorf("serial %s reserved %d times", sn, n)
		}
	}
}

var benchCerts = flag.Int("store.certs", 0, "records for BenchmarkCACertBySerial (default 100000, or $HSMCA_BENCH_CERTS)")

// BenchmarkCACertBySerial measures `cert show` lookups in a store holding
// N certificate-sized records (N from -store.certs or HSMCA_BENCH_CERTS;
// 1000000 for the DESIGN §7 figure). It reports the file size.
func BenchmarkCACertBySerial(b *testing.B) {
	n := *benchCerts
	if n == 0 {
		fmt.Sscan(os.Getenv("HSMCA_BENCH_CERTS"), &n)
	}
	if n == 0 {
		n = 100_000
	}
	s, path := openTemp(b)
	ctx := context.Background()
	der := make([]byte, 700) // a typical P-256 leaf
	serial := func(i int) string { return fmt.Sprintf("1%036x", uint64(i)*0x9e3779b97f4a7c15) }
	const chunk = 10_000
	for start := 0; start < n; start += chunk {
		err := s.db.Update(func(tx *bolt.Tx) error {
			for i := start; i < start+chunk && i < n; i++ {
				r := rec(serial(i), "i1", time.Now())
				r.DER, r.Final, r.Status = der, true, ca.StatusValid
				if err := caPutRecord(tx, r); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	// A parent benchmark runs once, so the fill above is not repeated
	// while the sub-benchmark scales b.N.
	b.Run(fmt.Sprintf("certs=%d", n), func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := s.CertBySerial(ctx, serial(i%n)); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(fi.Size())/float64(n), "bytes/cert")
		b.ReportMetric(float64(fi.Size())/1e6, "MB")
	})
}
