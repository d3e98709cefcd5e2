package store_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
// concurrent requests (grouped by the group committer).
func BenchmarkACMEUpdateOrderParallel(b *testing.B) {
	p := filepath.Join(b.TempDir(), "s.db")
	s, err := store.Open(p)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	// The server updates only orders it created: create a pool of them
	// (concurrently, so that the group committer makes it quick), then
	// update them round robin.
	const pool = 1024
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < pool; i += 16 {
				if err := s.CreateOrder(ctx, &acme.Order{ID: fmt.Sprintf("o%d", i), AccountID: "a", Status: acme.StatusPending}, nil); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.SetParallelism(8)
	var n atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			o := &acme.Order{ID: fmt.Sprintf("o%d", n.Add(1)%pool), AccountID: "a", Status: acme.StatusPending,
				Identifiers: []acme.Identifier{{Type: "dns", Value: "a.example.test"}}, Authzs: []string{"z1"}}
			if err := s.UpdateOrder(ctx, o, "", false); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestACMEAccounts(t *testing.T) {
	s, path := openStore(t)
	ctx := context.Background()
	a := &acme.Account{ID: "a1", KeyThumb: "k1", Status: acme.StatusValid, Key: []byte(`{"kty":"EC"}`)}
	if err := s.CreateAccount(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateAccount(ctx, &acme.Account{ID: "a2", KeyThumb: "k1"}); !errors.Is(err, acme.ErrConflict) {
		t.Fatalf("duplicate key: %v", err)
	}
	if _, err := s.GetAccount(ctx, "a2"); !errors.Is(err, acme.ErrNotFound) {
		t.Fatalf("conflicting account stored: %v", err)
	}
	if err := s.CreateAccount(ctx, &acme.Account{ID: "a3", KeyThumb: "k3"}); err != nil {
		t.Fatal(err)
	}
	// A caller whose read of the old key is stale is refused, and the
	// index is left as it was.
	a.KeyThumb = "k9"
	if err := s.UpdateAccount(ctx, a, "stale"); !errors.Is(err, acme.ErrConflict) {
		t.Fatalf("rollover from a stale old key: %v", err)
	}
	if got, err := s.GetAccountByKey(ctx, "k1"); err != nil || got.ID != "a1" {
		t.Fatalf("after a refused rollover, k1 finds %v, %v; want a1", got, err)
	}
	if _, err := s.GetAccountByKey(ctx, "k9"); !errors.Is(err, acme.ErrNotFound) {
		t.Fatalf("a refused rollover indexed its new key: %v", err)
	}
	// Key rollover moves the index; taking another account's key is refused.
	a.KeyThumb = "k3"
	if err := s.UpdateAccount(ctx, a, "k1"); !errors.Is(err, acme.ErrConflict) {
		t.Fatalf("rollover onto a used key: %v", err)
	}
	a.KeyThumb = "k2"
	if err := s.UpdateAccount(ctx, a, "k1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetAccountByKey(ctx, "k1"); !errors.Is(err, acme.ErrNotFound) {
		t.Fatalf("old key still indexed: %v", err)
	}
	// Durable across reopen.
	s.Close()
	s2, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	got, err := s2.GetAccountByKey(ctx, "k2")
	if err != nil || got.ID != "a1" || string(got.Key) != `{"kty":"EC"}` {
		t.Fatalf("after reopen: %v %+v", err, got)
	}
}

func TestACMEAuthzWorkMetaEAB(t *testing.T) {
	s, _ := openStore(t)
	ctx := context.Background()
	id := acme.Identifier{Type: "dns", Value: "a.example.test"}
	z := &acme.Authz{ID: "z1", AccountID: "a1", Identifier: id, Status: acme.StatusPending,
		Challenges: []*acme.Challenge{{Type: "http-01", Status: acme.StatusProcessing}}}
	if err := s.CreateOrder(ctx, &acme.Order{ID: "o1", AccountID: "a1", Authzs: []string{"z1"}}, []*acme.Authz{z}); err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateAuthz(ctx, z, acme.WorkValidate+"z1/http-01", true); err != nil {
		t.Fatal(err)
	}
	if w, err := s.ListWork(ctx, acme.WorkValidate); err != nil || len(w) != 1 || w[0] != "z1/http-01" {
		t.Fatalf("work %v %v", w, err)
	}
	if _, err := s.FindValidAuthz(ctx, "a1", id, false); !errors.Is(err, acme.ErrNotFound) {
		t.Fatalf("pending authz indexed as valid: %v", err)
	}
	z.Status = acme.StatusValid
	if err := s.UpdateAuthz(ctx, z, acme.WorkValidate+"z1/http-01", false); err != nil {
		t.Fatal(err)
	}
	if w, _ := s.ListWork(ctx, acme.WorkValidate); len(w) != 0 {
		t.Fatalf("work not cleared: %v", w)
	}
	if got, err := s.FindValidAuthz(ctx, "a1", id, false); err != nil || got.ID != "z1" {
		t.Fatalf("valid authz: %v %+v", err, got)
	}
	if _, err := s.FindValidAuthz(ctx, "a1", id, true); !errors.Is(err, acme.ErrNotFound) {
		t.Fatal("wildcard flag ignored")
	}
	if _, err := s.FindValidAuthz(ctx, "a2", id, false); !errors.Is(err, acme.ErrNotFound) {
		t.Fatal("another account's authz found")
	}
	z.Status = acme.StatusDeactivated
	if err := s.UpdateAuthz(ctx, z, "", false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.FindValidAuthz(ctx, "a1", id, false); !errors.Is(err, acme.ErrNotFound) {
		t.Fatal("deactivated authz still indexed")
	}

	o := &acme.Order{ID: "o1", AccountID: "a1", Status: acme.StatusValid, CertSerial: "ab"}
	if err := s.UpdateOrder(ctx, o, acme.WorkFinalize+"o1", true); err != nil {
		t.Fatal(err)
	}
	if err := s.FinishOrder(ctx, o, &acme.Cert{Serial: "ab", AccountID: "a1", DER: []byte{1}}); err != nil {
		t.Fatal(err)
	}
	if w, _ := s.ListWork(ctx, acme.WorkFinalize); len(w) != 0 {
		t.Fatalf("finalize work not cleared: %v", w)
	}
	if c, err := s.GetCert(ctx, "ab"); err != nil || c.AccountID != "a1" {
		t.Fatalf("cert %v %+v", err, c)
	}

	if _, err := s.GetMeta(ctx, "m"); !errors.Is(err, acme.ErrNotFound) {
		t.Fatal(err)
	}
	s.PutMeta(ctx, "m", []byte("v"))
	if v, err := s.GetMeta(ctx, "m"); err != nil || string(v) != "v" {
		t.Fatalf("meta %q %v", v, err)
	}
	s.PutMeta(ctx, "m", nil)
	if _, err := s.GetMeta(ctx, "m"); !errors.Is(err, acme.ErrNotFound) {
		t.Fatal("empty value did not delete")
	}

	kid, _, err := acme.CreateEAB(ctx, s, "l")
	if err != nil {
		t.Fatal(err)
	}
	e, err := s.GetEAB(ctx, kid)
	if err != nil || len(e.Key) != 32 {
		t.Fatalf("eab %v %+v", err, e)
	}
	if l, err := s.ListEAB(ctx); err != nil || len(l) != 1 {
		t.Fatalf("list %v %v", l, err)
	}
}

// TestACMEGroupCommit runs many concurrent writes through the group
// committer, some of which fail inside their transaction: each caller gets
// its own result, the failures change nothing, and every acknowledged
// write is there after the file is reopened.
func TestACMEGroupCommit(t *testing.T) {
	s, path := openStore(t)
	ctx := context.Background()
	const n = 64
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Every fourth account takes the key of the account before it:
			// of each such pair exactly one may win.
			thumb := fmt.Sprintf("k%d", i)
			if i%4 == 1 {
				thumb = fmt.Sprintf("k%d", i-1)
			}
			errs[i] = s.CreateAccount(ctx, &acme.Account{ID: fmt.Sprintf("g%d", i), KeyThumb: thumb, Status: acme.StatusValid})
		}()
	}
	wg.Wait()
	s.Close()
	s2, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	for i := range n {
		_, gerr := s2.GetAccount(ctx, fmt.Sprintf("g%d", i))
		switch {
		case errs[i] == nil && gerr != nil:
			t.Errorf("g%d acknowledged but not stored: %v", i, gerr)
		case errs[i] != nil && !errors.Is(errs[i], acme.ErrConflict):
			t.Errorf("g%d: %v", i, errs[i])
		case errs[i] != nil && !errors.Is(gerr, acme.ErrNotFound):
			t.Errorf("g%d refused but stored: %v", i, gerr)
		}
		if i%4 == 1 {
			if (errs[i] == nil) == (errs[i-1] == nil) {
				t.Errorf("accounts g%d and g%d with one key: errors %v and %v, want exactly one conflict", i-1, i, errs[i-1], errs[i])
			}
		} else if i%4 != 0 && errs[i] != nil {
			t.Errorf("g%d has its own key but failed: %v", i, errs[i])
		}
	}
}

// TestACMEFindValidAuthzAfterDeactivation: an account may hold several
// valid authorizations for one identifier; deactivating the newest leaves
// the older one findable, and the one found is the one that expires last.
func TestACMEFindValidAuthzAfterDeactivation(t *testing.T) {
	s, path := openStore(t)
	ctx := context.Background()
	id := acme.Identifier{Type: "dns", Value: "older.example.test"}
	now := time.Now().UTC()
	var zs []*acme.Authz
	for i := range 3 {
		z := &acme.Authz{ID: fmt.Sprintf("z%d", i), AccountID: "a1", Identifier: id, Status: acme.StatusPending,
			Expires: now.Add(time.Duration(i+1) * time.Hour)}
		if err := s.CreateOrder(ctx, &acme.Order{ID: "o" + z.ID, AccountID: "a1", Authzs: []string{z.ID}}, []*acme.Authz{z}); err != nil {
			t.Fatal(err)
		}
		zs = append(zs, z)
	}
	update := func(z *acme.Authz, status string) {
		t.Helper()
		z.Status = status
		if err := s.UpdateAuthz(ctx, z, "", false); err != nil {
			t.Fatal(err)
		}
	}
	find := func(want string) {
		t.Helper()
		got, err := s.FindValidAuthz(ctx, "a1", id, false)
		switch {
		case want == "" && !errors.Is(err, acme.ErrNotFound):
			t.Fatalf("FindValidAuthz: %+v, %v; want ErrNotFound", got, err)
		case want != "" && (err != nil || got.ID != want):
			t.Fatalf("FindValidAuthz: %+v, %v; want %s", got, err, want)
		}
	}
	update(zs[0], acme.StatusValid)
	update(zs[1], acme.StatusValid)
	find("z1")
	update(zs[1], acme.StatusDeactivated)
	find("z0")
	// Written again while valid, an authorization is listed once.
	update(zs[0], acme.StatusValid)
	update(zs[2], acme.StatusValid)
	find("z2")
	update(zs[2], acme.StatusDeactivated)
	find("z0")
	s.Close()
	s2, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	s = s2
	find("z0")
	update(zs[0], acme.StatusDeactivated)
	find("")
}

// TestACMECreateAccountClaimsEAB: an EAB key binds one account, claimed
// in the account's own transaction; of concurrent creations naming one
// key exactly one succeeds.
func TestACMECreateAccountClaimsEAB(t *testing.T) {
	s, _ := openStore(t)
	ctx := context.Background()
	kid, _, err := acme.CreateEAB(ctx, s, "team")
	if err != nil {
		t.Fatal(err)
	}
	const n = 16
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.CreateAccount(ctx, &acme.Account{ID: fmt.Sprintf("a%d", i), KeyThumb: fmt.Sprintf("k%d", i),
				Status: acme.StatusValid, EABKeyID: kid})
		}()
	}
	wg.Wait()
	winner := ""
	for i, err := range errs {
		switch {
		case err == nil && winner == "":
			winner = fmt.Sprintf("a%d", i)
		case err == nil:
			t.Fatalf("both %s and a%d bound with one EAB key", winner, i)
		case !errors.Is(err, acme.ErrEABBound):
			t.Fatalf("a%d: %v; want ErrEABBound", i, err)
		case func() bool { _, gerr := s.GetAccountByKey(ctx, fmt.Sprintf("k%d", i)); return gerr == nil }():
			t.Fatalf("a%d was refused but its key is indexed", i)
		}
	}
	if e, err := s.GetEAB(ctx, kid); err != nil || winner == "" || e.AccountID != winner {
		t.Fatalf("EAB %+v, %v; bound account %q", e, err, winner)
	}
	// A revoked or unknown key binds nothing.
	if err := s.CreateAccount(ctx, &acme.Account{ID: "r", KeyThumb: "kr", EABKeyID: "nope"}); !errors.Is(err, acme.ErrNotFound) {
		t.Fatalf("unknown EAB key: %v", err)
	}
	kid2, _, _ := acme.CreateEAB(ctx, s, "revoked")
	if err := acme.RevokeEAB(ctx, s, kid2); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateAccount(ctx, &acme.Account{ID: "r", KeyThumb: "kr", EABKeyID: kid2}); !errors.Is(err, acme.ErrEABRevoked) {
		t.Fatalf("revoked EAB key: %v", err)
	}
	if _, err := s.GetAccount(ctx, "r"); !errors.Is(err, acme.ErrNotFound) {
		t.Fatalf("account stored although its EAB key was refused: %v", err)
	}
}

// TestACMERevokeEABKeepsConcurrentBinding: a revocation racing an account
// creation that claims the key never erases the binding: if the account
// exists, the key's record names it (and is revoked).
func TestACMERevokeEABKeepsConcurrentBinding(t *testing.T) {
	s, _ := openStore(t)
	ctx := context.Background()
	for i := range 40 {
		kid, _, err := acme.CreateEAB(ctx, s, "race")
		if err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprintf("acct%d", i)
		var createErr, revokeErr error
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			createErr = s.CreateAccount(ctx, &acme.Account{ID: id, KeyThumb: "thumb-" + id, Status: acme.StatusValid, EABKeyID: kid})
		}()
		go func() { defer wg.Done(); revokeErr = acme.RevokeEAB(ctx, s, kid) }()
		wg.Wait()
		if revokeErr != nil {
			t.Fatal(revokeErr)
		}
		e, err := s.GetEAB(ctx, kid)
		if err != nil || !e.Revoked || e.Key != nil {
			t.Fatalf("round %d: EAB %+v, %v; want revoked without its key", i, e, err)
		}
		switch {
		case createErr == nil && e.AccountID != id:
			t.Fatalf("round %d: account %s was created with key %s, but the key's record names %q", i, id, kid, e.AccountID)
		case createErr != nil && !errors.Is(createErr, acme.ErrEABRevoked):
			t.Fatalf("round %d: create: %v", i, createErr)
		}
	}
	if err := acme.RevokeEAB(ctx, s, "no-such-key"); !errors.Is(err, acme.ErrNotFound) {
		t.Fatalf("revoke of an unknown key: %v", err)
	}
}
