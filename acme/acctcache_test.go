package acme

import (
	"context"
	"testing"
)

// slowAccounts is a Store whose GetAccount returns what the account was
// when the call started, after the test lets it finish.
type slowAccounts struct {
	Store
	cur     Account
	reads   int
	started chan struct{}
	release chan struct{}
}

func (s *slowAccounts) GetAccount(_ context.Context, id string) (*Account, error) {
	s.reads++
	a := s.cur
	if s.started != nil {
		s.started <- struct{}{}
		<-s.release
	}
	return &a, nil
}

const testJWK = `{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}`

func TestAccountCacheWrite(t *testing.T) {
	st := &slowAccounts{cur: Account{ID: "a1", Key: []byte(testJWK), Status: StatusValid}}
	var c accountCache
	var keys keyCache
	ctx := context.Background()

	// A read that started before a write must not cache the old state.
	st.started, st.release = make(chan struct{}), make(chan struct{})
	done := make(chan *Account)
	go func() {
		a, _, err := c.get(ctx, st, &keys, "a1")
		if err != nil {
			t.Error(err)
		}
		done <- a
	}()
	<-st.started
	if err := c.write("a1", func() error { st.cur.Status = StatusDeactivated; return nil }); err != nil {
		t.Fatal(err)
	}
	close(st.release)
	if a := <-done; a.Status != StatusValid {
		t.Fatalf("read that started before the write: %s", a.Status)
	}
	st.started = nil
	a, key, err := c.get(ctx, st, &keys, "a1")
	if err != nil || a.Status != StatusDeactivated || key == nil {
		t.Fatalf("after the write: %v %v %v", a, key, err)
	}
	if st.reads != 2 {
		t.Fatalf("store reads %d, want 2 (the stale read was cached)", st.reads)
	}

	// Now cached: no store read, and the copy is the caller's.
	a.Contact = append(a.Contact, "mailto:x@example.org")
	a.Status = StatusValid
	b, _, _ := c.get(ctx, st, &keys, "a1")
	if st.reads != 2 || b.Status != StatusDeactivated || len(b.Contact) != 0 {
		t.Fatalf("cached read: reads %d, %+v", st.reads, b)
	}
}
