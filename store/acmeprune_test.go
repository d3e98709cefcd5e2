package store_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hsmca/hsmca/acme"
	"github.com/hsmca/hsmca/store"
)

// pruneFixture is a store with records on both sides of the retention
// line, at a fixed clock.
type pruneFixture struct {
	s   *store.Store
	now time.Time
	ret time.Duration
}

func (f *pruneFixture) policy() acme.PrunePolicy {
	return acme.PrunePolicy{Now: f.now, Retention: f.ret, Batch: 2, MaxDeletes: 1000}
}

func authzFor(id, acct, name, status string, expires time.Time) *acme.Authz {
	return &acme.Authz{ID: id, AccountID: acct, Identifier: acme.Identifier{Type: "dns", Value: name},
		Status: status, Expires: expires, Token: "t",
		Challenges: []*acme.Challenge{{Type: acme.ChallengeHTTP01, Status: status}, {Type: acme.ChallengeDNS01, Status: acme.StatusPending}}}
}

func TestACMEPrune(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	f := &pruneFixture{s: s, now: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC), ret: 7 * 24 * time.Hour}
	old := f.now.Add(-f.ret - time.Hour)    // expired before the retention line
	recent := f.now.Add(-f.ret + time.Hour) // expired, but within retention
	future := f.now.Add(time.Hour)

	// Orders: id -> (status, expires, should survive).
	orders := []struct {
		id, status string
		expires    time.Time
		keep       bool
	}{
		{"o-old-pending", acme.StatusPending, old, false},
		{"o-old-invalid", acme.StatusInvalid, old, false},
		{"o-old-valid", acme.StatusValid, old, false},
		{"o-old-processing", acme.StatusProcessing, old, true},
		{"o-recent", acme.StatusPending, recent, true},
		{"o-live", acme.StatusPending, future, true},
	}
	for _, o := range orders {
		err := s.CreateOrder(ctx, &acme.Order{ID: o.id, AccountID: "acct1", Status: o.status, Expires: o.expires, Authzs: []string{"z-live"}}, nil)
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := s.UpdateOrder(ctx, &acme.Order{ID: "o-old-processing", AccountID: "acct1", Status: acme.StatusProcessing, Expires: old},
		acme.WorkFinalize+"o-old-processing", true); err != nil {
		t.Fatal(err)
	}

	// Authorizations, created through orders as the server does.
	authzs := []struct {
		a    *acme.Authz
		keep bool
	}{
		{authzFor("z-old-valid", "acct1", "old.example", acme.StatusValid, old), false},
		{authzFor("z-old-pending", "acct1", "pend.example", acme.StatusPending, old), false},
		{authzFor("z-recent-valid", "acct1", "recent.example", acme.StatusValid, recent), true},
		{authzFor("z-live", "acct1", "live.example", acme.StatusValid, future), true},
	}
	for _, z := range authzs {
		st := z.a.Status
		z.a.Status = acme.StatusPending
		if err := s.CreateOrder(ctx, &acme.Order{ID: "holder-" + z.a.ID, AccountID: "acct2", Status: acme.StatusPending, Expires: future}, []*acme.Authz{z.a}); err != nil {
			t.Fatal(err)
		}
		z.a.Status = st
		if err := s.UpdateAuthz(ctx, z.a, acme.WorkValidate+z.a.ID+"/"+acme.ChallengeDNS01, true); err != nil {
			t.Fatal(err)
		}
	}
	// Certificate links.
	certs := []struct {
		c    *acme.Cert
		keep bool
	}{
		{&acme.Cert{Serial: "c1", AccountID: "acct1", OrderID: "o-old-valid", NotAfter: old}, false},
		{&acme.Cert{Serial: "c2", AccountID: "acct1", OrderID: "o-old-valid", NotAfter: recent}, true},
		// The order that issued it is pruned; the unexpired certificate's
		// link (download, revokeCert, renewalInfo) stays.
		{&acme.Cert{Serial: "c3", AccountID: "acct1", OrderID: "o-old-valid", NotAfter: future.Add(60 * 24 * time.Hour)}, true},
	}
	for _, c := range certs {
		if err := s.FinishOrder(ctx, &acme.Order{ID: "o-fin-" + c.c.Serial, AccountID: "acct3", Status: acme.StatusValid, Expires: future}, c.c); err != nil {
			t.Fatal(err)
		}
	}
	// Fill the record cache with everything that is about to go.
	for _, o := range orders {
		if _, err := s.GetOrder(ctx, o.id); err != nil {
			t.Fatal(err)
		}
	}
	for _, z := range authzs {
		if _, err := s.GetAuthz(ctx, z.a.ID); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range certs {
		if _, err := s.GetCert(ctx, c.c.Serial); err != nil {
			t.Fatal(err)
		}
	}

	st, err := s.PruneACME(ctx, f.policy())
	if err != nil {
		t.Fatal(err)
	}
	if st.Orders != 3 || st.Authzs != 2 || st.Certs != 1 || !st.Complete {
		t.Fatalf("stats %+v, want 3 orders, 2 authzs, 1 cert, complete", st)
	}

	for _, o := range orders {
		_, err := s.GetOrder(ctx, o.id)
		if o.keep && err != nil {
			t.Errorf("order %s: %v, want kept", o.id, err)
		}
		if !o.keep && !errors.Is(err, acme.ErrNotFound) {
			t.Errorf("order %s: err %v, want ErrNotFound (pruned, not served from the cache)", o.id, err)
		}
	}
	ids, _, err := s.ListOrders(ctx, "acct1", "", 100)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(ids), "[o-old-processing o-recent o-live]"; got != want {
		t.Errorf("acct1 orders %s, want %s", got, want)
	}
	work, err := s.ListWork(ctx, acme.WorkFinalize)
	if err != nil || fmt.Sprint(work) != "[o-old-processing]" {
		t.Errorf("finalize work %v %v, want the processing order's", work, err)
	}

	for _, z := range authzs {
		_, err := s.GetAuthz(ctx, z.a.ID)
		if z.keep && err != nil {
			t.Errorf("authz %s: %v, want kept", z.a.ID, err)
		}
		if !z.keep && !errors.Is(err, acme.ErrNotFound) {
			t.Errorf("authz %s: err %v, want ErrNotFound", z.a.ID, err)
		}
		found, err := s.FindValidAuthz(ctx, "acct1", z.a.Identifier, false)
		switch {
		case z.keep && z.a.Status == acme.StatusValid && (err != nil || found.ID != z.a.ID):
			t.Errorf("reuse index for %s: %v, want it", z.a.ID, err)
		case !z.keep && !errors.Is(err, acme.ErrNotFound):
			t.Errorf("reuse index still names pruned %s (err %v)", z.a.ID, err)
		}
	}
	vwork, err := s.ListWork(ctx, acme.WorkValidate)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(vwork), "[z-live/dns-01 z-recent-valid/dns-01]"; got != want {
		t.Errorf("validation work %s, want %s", got, want)
	}

	for _, c := range certs {
		_, err := s.GetCert(ctx, c.c.Serial)
		if c.keep && err != nil {
			t.Errorf("cert link %s: %v, want kept", c.c.Serial, err)
		}
		if !c.keep && !errors.Is(err, acme.ErrNotFound) {
			t.Errorf("cert link %s: err %v, want ErrNotFound", c.c.Serial, err)
		}
	}

	// A late update of a pruned record does not bring it back.
	if err := s.UpdateOrder(ctx, &acme.Order{ID: "o-old-pending", AccountID: "acct1"}, "", false); !errors.Is(err, acme.ErrNotFound) {
		t.Errorf("UpdateOrder of a pruned order: %v, want ErrNotFound", err)
	}
	if err := s.UpdateAuthz(ctx, authzs[0].a, "", false); !errors.Is(err, acme.ErrNotFound) {
		t.Errorf("UpdateAuthz of a pruned authz: %v, want ErrNotFound", err)
	}
	if err := s.UpdateCert(ctx, certs[0].c); !errors.Is(err, acme.ErrNotFound) {
		t.Errorf("UpdateCert of a pruned link: %v, want ErrNotFound", err)
	}
	if _, err := s.GetAuthz(ctx, authzs[0].a.ID); !errors.Is(err, acme.ErrNotFound) {
		t.Errorf("pruned authz after a late update: %v, want ErrNotFound", err)
	}

	// A second pass finds nothing more; once the clock moves past the
	// retention of the recent records, they go too (not the processing
	// order, and not the certificate that is still valid).
	if st, err := s.PruneACME(ctx, f.policy()); err != nil || st.Orders+st.Authzs+st.Certs != 0 {
		t.Fatalf("second pass: %+v %v, want nothing deleted", st, err)
	}
	f.now = f.now.Add(2 * time.Hour)
	if st, err := s.PruneACME(ctx, f.policy()); err != nil || st.Orders != 1 || st.Authzs != 1 || st.Certs != 1 {
		t.Fatalf("later pass: %+v %v, want the recent order, authz and cert link", st, err)
	}
	if _, err := s.GetOrder(ctx, "o-old-processing"); err != nil {
		t.Errorf("processing order: %v, want kept", err)
	}
	if _, err := s.GetCert(ctx, "c3"); err != nil {
		t.Errorf("unexpired certificate's link: %v, want kept", err)
	}
}

// TestACMEPruneBound checks that a pass stops at MaxDeletes and that the
// next pass goes on where it stopped.
func TestACMEPruneBound(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	const n = 23
	for i := 0; i < n; i++ {
		o := &acme.Order{ID: fmt.Sprintf("o%02d", i), AccountID: fmt.Sprintf("a%d", i%3), Status: acme.StatusInvalid, Expires: now.Add(-time.Minute)}
		if err := s.CreateOrder(ctx, o, nil); err != nil {
			t.Fatal(err)
		}
	}
	p := acme.PrunePolicy{Now: now, Retention: 0, Batch: 4, MaxDeletes: 10}
	total := 0
	for pass := 0; pass < 10; pass++ {
		st, err := s.PruneACME(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Orders > p.MaxDeletes {
			t.Fatalf("pass %d deleted %d orders, bound %d", pass, st.Orders, p.MaxDeletes)
		}
		total += st.Orders
		if st.Complete {
			break
		}
		if st.Orders != p.MaxDeletes {
			t.Fatalf("incomplete pass %d deleted %d, want %d", pass, st.Orders, p.MaxDeletes)
		}
	}
	if total != n {
		t.Fatalf("deleted %d orders in all, want %d", total, n)
	}
	for _, a := range []string{"a0", "a1", "a2"} {
		if ids, _, err := s.ListOrders(ctx, a, "", 100); err != nil || len(ids) != 0 {
			t.Errorf("account %s still lists %v (%v)", a, ids, err)
		}
	}
}

// A finalize that completes after its (expired) order was pruned stores
// the certificate and lists the order again, so the next pass finds it.
func TestACMEPruneFinishAfterPrune(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	o := &acme.Order{ID: "o1", AccountID: "a", Status: acme.StatusPending, Expires: now.Add(-time.Second)}
	if err := s.CreateOrder(ctx, o, nil); err != nil {
		t.Fatal(err)
	}
	p := acme.PrunePolicy{Now: now, Batch: 10}
	if st, err := s.PruneACME(ctx, p); err != nil || st.Orders != 1 {
		t.Fatalf("%+v %v", st, err)
	}
	o.Status, o.CertSerial = acme.StatusValid, "c1"
	if err := s.FinishOrder(ctx, o, &acme.Cert{Serial: "c1", AccountID: "a", OrderID: "o1", NotAfter: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if ids, _, err := s.ListOrders(ctx, "a", "", 10); err != nil || fmt.Sprint(ids) != "[o1]" {
		t.Fatalf("orders after a late finish: %v %v", ids, err)
	}
	if st, err := s.PruneACME(ctx, p); err != nil || st.Orders != 1 || st.Certs != 0 {
		t.Fatalf("second pass: %+v %v, want the order again, not the unexpired certificate", st, err)
	}
	if _, err := s.GetCert(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
}

func TestACMEPruneCanceled(t *testing.T) {
	s, _ := openStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	st, err := s.PruneACME(ctx, acme.PrunePolicy{Now: time.Now(), Batch: 1})
	if !errors.Is(err, context.Canceled) || st.Complete {
		t.Fatalf("canceled pass: %+v %v", st, err)
	}
}

// fillPrune stores n orders, each with one authorization and one
// certificate link, all expired at expired.
// The writes run from 32 goroutines so that the group committer shares
// the commits and filling stays quick.
func fillPrune(b *testing.B, s *store.Store, n int, expired time.Time) {
	ctx := context.Background()
	der := make([]byte, 700) // about a leaf's size
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 32 {
				id := fmt.Sprintf("%08d", i)
				z := authzFor("z"+id, "acct", id+".example.test", acme.StatusValid, expired)
				o := &acme.Order{ID: "o" + id, AccountID: "acct", Status: acme.StatusValid, Expires: expired, Authzs: []string{z.ID},
					Identifiers: []acme.Identifier{z.Identifier}, CertSerial: "c" + id}
				if err := s.CreateOrder(ctx, o, []*acme.Authz{z}); err != nil {
					b.Error(err)
					return
				}
				if err := s.FinishOrder(ctx, o, &acme.Cert{Serial: "c" + id, AccountID: "acct", OrderID: o.ID, DER: der, NotAfter: expired}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
}

// BenchmarkACMEPrunePass measures one pass over a store of 5000 orders
// (15000 records): "scan" finds nothing to delete (the steady cost of a
// pass over live records), "delete" deletes everything (with fsyncs, 256
// deletions per transaction). ns/record is per record examined.
func BenchmarkACMEPrunePass(b *testing.B) {
	const n = 5000
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	b.Run("scan", func(b *testing.B) {
		s, err := store.Open(filepath.Join(b.TempDir(), "s.db"))
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		fillPrune(b, s, n, now.Add(time.Hour))
		p := acme.PrunePolicy{Now: now, Retention: time.Hour, Batch: 256, MaxDeletes: 50000}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			st, err := s.PruneACME(context.Background(), p)
			if err != nil || st.Scanned != 3*n {
				b.Fatal(st, err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*3*n), "ns/record")
	})
	b.Run("delete", func(b *testing.B) {
		var total time.Duration
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			s, err := store.Open(filepath.Join(b.TempDir(), fmt.Sprintf("s%d.db", i)))
			if err != nil {
				b.Fatal(err)
			}
			fillPrune(b, s, n, now.Add(-2*time.Hour))
			p := acme.PrunePolicy{Now: now, Retention: time.Hour, Batch: 256, MaxDeletes: 50000}
			b.StartTimer()
			t0 := time.Now()
			st, err := s.PruneACME(context.Background(), p)
			total += time.Since(t0)
			b.StopTimer()
			if err != nil || st.Orders != n || st.Authzs != n || st.Certs != n {
				b.Fatal(st, err)
			}
			s.Close()
		}
		b.ReportMetric(float64(total.Nanoseconds())/float64(b.N*3*n), "ns/record")
	})
}
