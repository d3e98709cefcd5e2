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
