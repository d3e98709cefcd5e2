package store

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/hsmca/hsmca/acme"
	bolt "go.etcd.io/bbolt"
)

// A delete leaves a tombstone: a read that began before the delete
// committed cannot cache the deleted record again.
func TestRecordCacheDelete(t *testing.T) {
	var c recordCache
	k := cacheKey{'o', "o1"}
	c.put(k, version{5, 1}, "write at 5")
	c.del(k, version{7, 1})
	if v, ok := c.get(k); ok {
		t.Fatalf("deleted record served: %v", v)
	}
	c.put(k, version{6, math.MaxUint64}, "read of snapshot 6, before the delete")
	if v, ok := c.get(k); ok {
		t.Fatalf("a read older than the delete was cached: %v", v)
	}
	c.put(k, version{8, 1}, "written again at 8")
	if v, _ := c.get(k); v != "written again at 8" {
		t.Fatalf("a write after the delete was not cached: %v", v)
	}
}

func lastTxID(t *testing.T, s *Store) int {
	t.Helper()
	var id int
	if err := s.db.View(func(tx *bolt.Tx) error { id = tx.ID(); return nil }); err != nil {
		t.Fatal(err)
	}
	return id
}

// Each write transaction of a pass deletes at most Batch records: 10
// expired orders with Batch 3 take 4 write transactions.
func TestACMEPruneBatchPerTransaction(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 10; i++ {
		o := &acme.Order{ID: fmt.Sprintf("o%d", i), AccountID: "a", Status: acme.StatusInvalid, Expires: now.Add(-time.Hour)}
		if err := s.CreateOrder(ctx, o, nil); err != nil {
			t.Fatal(err)
		}
	}
	before := lastTxID(t, s)
	st, err := s.PruneACME(ctx, acme.PrunePolicy{Now: now, Batch: 3, MaxDeletes: 100})
	if err != nil {
		t.Fatal(err)
	}
	if st.Orders != 10 || !st.Complete {
		t.Fatalf("stats %+v", st)
	}
	if txs := lastTxID(t, s) - before; txs != 4 {
		t.Fatalf("the pass took %d write transactions, want 4 (10 deletions, 3 per transaction)", txs)
	}
}

// authzIdxEntries returns the reuse index as "key => value" lines.
func authzIdxEntries(t *testing.T, s *Store) []string {
	t.Helper()
	var out []string
	if err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bAuthzIdx).ForEach(func(k, v []byte) error {
			out = append(out, fmt.Sprintf("%q => %s", k, v))
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// A reuse index entry that lists several authorizations loses the ID of
// each one the pruner deletes, and goes once it lists none: two valid
// authorizations of one account for one name (a renewal after the reuse
// window), the older expired long ago and pruned alone, then both.
func TestACMEPruneAuthzIndexList(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	expires := map[string]time.Time{"z1": now.Add(-30 * 24 * time.Hour), "z2": now.Add(time.Hour)}
	for _, id := range []string{"z1", "z2"} {
		a := &acme.Authz{ID: id, AccountID: "acct", Identifier: acme.Identifier{Type: "dns", Value: "a.example"},
			Status: acme.StatusPending, Expires: expires[id], Token: "t",
			Challenges: []*acme.Challenge{{Type: acme.ChallengeHTTP01, Status: acme.StatusPending}}}
		if err := s.CreateOrder(ctx, &acme.Order{ID: "o" + id, AccountID: "acct", Status: acme.StatusPending, Expires: expires[id]}, []*acme.Authz{a}); err != nil {
			t.Fatal(err)
		}
		a.Status, a.Challenges[0].Status = acme.StatusValid, acme.StatusValid
		if err := s.UpdateAuthz(ctx, a, "", false); err != nil {
			t.Fatal(err)
		}
	}
	key := fmt.Sprintf("%q", authzIdxKey("acct", acme.Identifier{Type: "dns", Value: "a.example"}, false))
	if got, want := fmt.Sprint(authzIdxEntries(t, s)), "["+key+" => z1,z2]"; got != want {
		t.Fatalf("reuse index %s, want %s", got, want)
	}

	st, err := s.PruneACME(ctx, acme.PrunePolicy{Now: now, Retention: time.Hour, Batch: 10, MaxDeletes: 100})
	if err != nil || st.Authzs != 1 {
		t.Fatalf("first pass: %+v %v, want z1 pruned", st, err)
	}
	if got, want := fmt.Sprint(authzIdxEntries(t, s)), "["+key+" => z2]"; got != want {
		t.Fatalf("after pruning z1 the reuse index is %s, want %s", got, want)
	}

	st, err = s.PruneACME(ctx, acme.PrunePolicy{Now: now.Add(30 * 24 * time.Hour), Retention: time.Hour, Batch: 10, MaxDeletes: 100})
	if err != nil || st.Authzs != 1 {
		t.Fatalf("second pass: %+v %v, want z2 pruned", st, err)
	}
	if got := authzIdxEntries(t, s); len(got) != 0 {
		t.Fatalf("both authorizations pruned, but the reuse index keeps %q", got)
	}
}

// Both authorizations of a list pruned in one pass (one transaction):
// the entry goes.
func TestACMEPruneAuthzIndexListOnePass(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	old := now.Add(-30 * 24 * time.Hour)
	for _, id := range []string{"z1", "z2", "z3"} {
		a := &acme.Authz{ID: id, AccountID: "acct", Identifier: acme.Identifier{Type: "dns", Value: "a.example"},
			Status: acme.StatusPending, Expires: old, Token: "t",
			Challenges: []*acme.Challenge{{Type: acme.ChallengeHTTP01, Status: acme.StatusPending}}}
		if err := s.CreateOrder(ctx, &acme.Order{ID: "o" + id, AccountID: "acct", Status: acme.StatusPending, Expires: old}, []*acme.Authz{a}); err != nil {
			t.Fatal(err)
		}
		a.Status, a.Challenges[0].Status = acme.StatusValid, acme.StatusValid
		if err := s.UpdateAuthz(ctx, a, "", false); err != nil {
			t.Fatal(err)
		}
	}
	st, err := s.PruneACME(ctx, acme.PrunePolicy{Now: now, Retention: time.Hour, Batch: 10, MaxDeletes: 100})
	if err != nil || st.Authzs != 3 {
		t.Fatalf("pass: %+v %v, want 3 authorizations pruned", st, err)
	}
	if got := authzIdxEntries(t, s); len(got) != 0 {
		t.Fatalf("every authorization pruned, but the reuse index keeps %q", got)
	}
}
