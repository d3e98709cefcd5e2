package store_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/hsmca/hsmca/acme"
	"github.com/hsmca/hsmca/store"
)

func openStore(t *testing.T) (*store.Store, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "s.db")
	s, err := store.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, p
}

func TestACMEOrdersList(t *testing.T) {
	s, _ := openStore(t)
	ctx := context.Background()
	var want []string
	for i := 0; i < 7; i++ {
		o := &acme.Order{ID: fmt.Sprintf("o%d", i), AccountID: "acct1", Status: acme.StatusPending}
		if err := s.CreateOrder(ctx, o, nil); err != nil {
			t.Fatal(err)
		}
		want = append(want, o.ID)
		// Another account's orders interleave and must not show up.
		if err := s.CreateOrder(ctx, &acme.Order{ID: fmt.Sprintf("x%d", i), AccountID: "acct10"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	// Re-storing an order does not list it twice.
	if err := s.CreateOrder(ctx, &acme.Order{ID: "o0", AccountID: "acct1"}, nil); err != nil {
		t.Fatal(err)
	}
	var got []string
	cursor := ""
	for page := 0; page < 10; page++ {
		ids, next, err := s.ListOrders(ctx, "acct1", cursor, 3)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ids...)
		if next == "" {
			break
		}
		cursor = next
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("listed %v, want %v", got, want)
	}
}

// BenchmarkACMEUpdateOrderParallel measures durable order writes from
// concurrent requests (grouped by bbolt's Batch).
func BenchmarkACMEUpdateOrderParallel(b *testing.B) {
	p := filepath.Join(b.TempDir(), "s.db")
	s, err := store.Open(p)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	b.SetParallelism(8)
	var n atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			o := &acme.Order{ID: fmt.Sprintf("o%d", n.Add(1)), AccountID: "a", Status: acme.StatusPending,
				Identifiers: []acme.Identifier{{Type: "dns", Value: "a.example.test"}}, Authzs: []string{"z1"}}
			if err := s.UpdateOrder(ctx, o, "", false); err != nil {
				b.Fatal(err)
			}
		}
	})
}
