package quorum

import (
	"bytes"
	"crypto/rand"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hsmca/hsmca/hsm"
	bolt "go.etcd.io/bbolt"
)

func TestDealRecoverEverySubset(t *testing.T) {
	tests := []struct{ n, m int }{{1, 1}, {3, 2}, {5, 3}, {5, 5}, {7, 4}}
	for _, tc := range tests {
		t.Run("", func(t *testing.T) {
			d, err := Deal(rand.Reader, nil, tc.n, tc.m)
			if err != nil {
				t.Fatal(err)
			}
			if m, err := ParseCommitments(d.Commitments); err != nil || m != tc.m {
				t.Fatalf("ParseCommitments = %d, %v; want %d", m, err, tc.m)
			}
			for i, v := range d.Values {
				if err := VerifyShare(d.Commitments, i+1, v); err != nil {
					t.Fatalf("share %d: %v", i+1, err)
				}
			}
			// Every subset of size m recovers; every subset of size m-1 fails.
			for mask := 0; mask < 1<<tc.n; mask++ {
				set := map[int][]byte{}
				for i := range tc.n {
					if mask&(1<<i) != 0 {
						set[i+1] = d.Values[i]
					}
				}
				got, err := Recover(d.Commitments, set)
				switch {
				case len(set) >= tc.m && (err != nil || !bytes.Equal(got, d.Secret)):
					t.Fatalf("subset %b: got %x, %v; want the secret", mask, got, err)
				case len(set) < tc.m && err == nil:
					t.Fatalf("subset %b of %d shares recovered a secret with threshold %d", mask, len(set), tc.m)
				}
			}
		})
	}
}

func TestVerifyShareRejects(t *testing.T) {
	d, err := Deal(rand.Reader, nil, 5, 3)
	if err != nil {
		t.Fatal(err)
	}
	other, err := Deal(rand.Reader, nil, 5, 3)
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(d.Values[1])
	flipped[3] ^= 0x01
	tests := []struct {
		name     string
		index    int
		value    []byte
		mismatch bool // ErrShareMismatch rather than a malformed error
	}{
		{"bit flipped", 2, flipped, true},
		{"wrong index", 3, d.Values[1], true},
		{"other dealing", 2, other.Values[1], true},
		{"short value", 2, d.Values[1][:31], false},
		{"index zero", 0, d.Values[1], false},
		{"index too large", 256, d.Values[1], false},
		{"non-canonical scalar", 2, bytes.Repeat([]byte{0xff}, 32), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := VerifyShare(d.Commitments, tc.index, tc.value)
			if err == nil {
				t.Fatal("accepted")
			}
			if got := errors.Is(err, ErrShareMismatch); got != tc.mismatch {
				t.Fatalf("errors.Is(%v, ErrShareMismatch) = %v", err, got)
			}
		})
	}
}

func TestRedealSameSecret(t *testing.T) {
	d, err := Deal(rand.Reader, nil, 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := Deal(rand.Reader, d.Secret, 5, 3)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(d.Secret, d2.Secret) {
		t.Fatal("re-deal changed the secret")
	}
	got, err := Recover(d2.Commitments, map[int][]byte{1: d2.Values[0], 4: d2.Values[3], 5: d2.Values[4]})
	if err != nil || !bytes.Equal(got, d.Secret) {
		t.Fatalf("recover after re-deal: %x, %v", got, err)
	}
	// An old share does not verify against the new commitments.
	if err := VerifyShare(d2.Commitments, 1, d.Values[0]); !errors.Is(err, ErrShareMismatch) {
		t.Fatalf("old share against new commitments: %v", err)
	}
}

func TestDealRejectsBadParams(t *testing.T) {
	tests := []struct {
		name   string
		secret []byte
		n, m   int
	}{
		{"n zero", nil, 0, 1},
		{"n too large", nil, 256, 2},
		{"m zero", nil, 3, 0},
		{"m above n", nil, 3, 4},
		{"short secret", make([]byte, 31), 3, 2},
		{"zero secret", make([]byte, 32), 3, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Deal(rand.Reader, tc.secret, tc.n, tc.m); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type fixture struct {
	d      *Dealing
	params Params
	clock  *fakeClock
	store  LockoutStore
	events []string
}

func newFixture(t *testing.T, n, m int) *fixture {
	t.Helper()
	d, err := Deal(rand.Reader, nil, n, m)
	if err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(t.TempDir(), "q.db"), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	clock := &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	st, err := NewBoltLockoutStore(db, "lockout", "meta", clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{
		d:      d,
		params: Params{Module: "m1", Partition: "issuing", Generation: 1, Threshold: m, Shares: n, Commitments: d.Commitments},
		clock:  clock,
		store:  st,
	}
}

func (f *fixture) collector(t *testing.T) *Collector {
	t.Helper()
	c, err := NewCollector(Config{Params: f.params, Store: f.store, Clock: f.clock.Now,
		OnEvent: func(typ string, _ map[string]string) error { f.events = append(f.events, typ); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (f *fixture) share(i int) hsm.Share {
	return hsm.Share{Module: "m1", Partition: "issuing", Generation: 1, Index: i, Threshold: f.params.Threshold, Value: bytes.Clone(f.d.Values[i-1])}
}

func TestCollectorQuorum(t *testing.T) {
	f := newFixture(t, 5, 3)
	c := f.collector(t)
	for k, idx := range []int{4, 2} {
		p, err := c.AddShare(f.share(idx))
		if err != nil {
			t.Fatal(err)
		}
		if p.Presented != k+1 || p.Secret != nil || p.CollectingUntil.IsZero() {
			t.Fatalf("after %d shares: %+v", k+1, p)
		}
	}
	if _, err := c.AddShare(f.share(2)); !errors.Is(err, hsm.ErrDuplicateShare) {
		t.Fatalf("duplicate: %v", err)
	}
	p, err := c.AddShare(f.share(5))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p.Secret, f.d.Secret) {
		t.Fatal("third share did not recover the secret")
	}
	if got := c.Progress(); got.Presented != 0 || got.Secret != nil {
		t.Fatalf("collector kept state after the quorum: %+v", got)
	}
	if p.FailedShares != 0 {
		t.Fatalf("duplicate counted as failure: %+v", p)
	}
}

func TestCollectorRejectsNamingShare(t *testing.T) {
	f := newFixture(t, 5, 3)
	tests := []struct {
		name   string
		mutate func(*hsm.Share)
		wrong  bool
	}{
		{"other module", func(s *hsm.Share) { s.Module = "m2" }, true},
		{"other partition", func(s *hsm.Share) { s.Partition = "root" }, true},
		{"old generation", func(s *hsm.Share) { s.Generation = 0 }, true},
		{"other threshold", func(s *hsm.Share) { s.Threshold = 2 }, true},
		{"changed value", func(s *hsm.Share) { s.Value[0] ^= 1 }, false},
		{"index out of range", func(s *hsm.Share) { s.Index = 6 }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := f.collector(t)
			s := f.share(3)
			tc.mutate(&s)
			_, err := c.AddShare(s)
			var serr *hsm.ShareError
			if !errors.As(err, &serr) {
				t.Fatalf("got %v, want *hsm.ShareError", err)
			}
			if serr.Index != s.Index || serr.WrongModule != tc.wrong {
				t.Fatalf("got %+v", serr)
			}
			// Reset the failure count for the next case.
			f.clock.Add(DefaultLockoutDuration)
		})
	}
}

func TestCollectorLockoutSurvivesRestart(t *testing.T) {
	f := newFixture(t, 3, 2)
	c := f.collector(t)
	bad := f.share(1)
	bad.Value[5] ^= 0x40
	for i := 1; i <= DefaultMaxFailures; i++ {
		_, err := c.AddShare(bad)
		var serr *hsm.ShareError
		if !errors.As(err, &serr) {
			t.Fatalf("bad share %d: %v", i, err)
		}
		f.clock.Add(time.Minute)
	}
	_, err := c.AddShare(f.share(2)) // the 6th, a good one, is refused too
	var lerr *hsm.LockedError
	if !errors.As(err, &lerr) || lerr.Partition != "issuing" {
		t.Fatalf("6th share: %v, want *hsm.LockedError", err)
	}
	// A new collector on the same store (a restart) is still locked.
	c2 := f.collector(t)
	if _, err := c2.AddShare(f.share(2)); !errors.As(err, &lerr) {
		t.Fatalf("after restart: %v, want *hsm.LockedError", err)
	}
	if !lerr.Until.After(f.clock.Now()) {
		t.Fatalf("locked until %v, now %v", lerr.Until, f.clock.Now())
	}
	// Once the lockout has passed, shares are accepted again.
	f.clock.now = lerr.Until
	if _, err := c2.AddShare(f.share(2)); err != nil {
		t.Fatalf("after lockout: %v", err)
	}
	if p := c2.Progress(); p.FailedShares != 0 || !p.LockedUntil.IsZero() {
		t.Fatalf("lockout state not cleared: %+v", p)
	}
	want := map[string]int{EventShareRejected: 5, EventLockout: 1, EventShareAccepted: 1}
	got := map[string]int{}
	for _, e := range f.events {
		got[e]++
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("events %v, want %v", got, want)
		}
	}
}

func TestCollectorFailureWindowExpires(t *testing.T) {
	f := newFixture(t, 3, 2)
	c := f.collector(t)
	bad := f.share(1)
	bad.Module = "other"
	for range DefaultMaxFailures - 1 {
		if _, err := c.AddShare(bad); err == nil {
			t.Fatal("bad share accepted")
		}
	}
	f.clock.Add(DefaultLockoutDuration)
	_, err := c.AddShare(bad)
	var lerr *hsm.LockedError
	if errors.As(err, &lerr) {
		t.Fatal("failures of an expired window counted towards the lockout")
	}
	if p := c.Progress(); p.FailedShares != 1 {
		t.Fatalf("failed shares = %d, want 1", p.FailedShares)
	}
}

func TestCollectorWindowExpires(t *testing.T) {
	f := newFixture(t, 3, 2)
	c := f.collector(t)
	if _, err := c.AddShare(f.share(1)); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(DefaultWindow)
	p, err := c.AddShare(f.share(2))
	if err != nil {
		t.Fatal(err)
	}
	if p.Secret != nil || p.Presented != 1 {
		t.Fatalf("share from an expired window counted: %+v", p)
	}
}

func TestCollectorSetParamsRefusesOldGeneration(t *testing.T) {
	f := newFixture(t, 3, 2)
	c := f.collector(t)
	d2, err := Deal(rand.Reader, f.d.Secret, 4, 3)
	if err != nil {
		t.Fatal(err)
	}
	p2 := Params{Module: "m1", Partition: "issuing", Generation: 2, Threshold: 3, Shares: 4, Commitments: d2.Commitments}
	if err := c.SetParams(p2); err != nil {
		t.Fatal(err)
	}
	_, err = c.AddShare(f.share(1))
	var serr *hsm.ShareError
	if !errors.As(err, &serr) || !serr.WrongModule {
		t.Fatalf("old generation share: %v", err)
	}
}

func FuzzParseCommitments(f *testing.F) {
	d, err := Deal(rand.Reader, nil, 3, 2)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(d.Commitments, 1, d.Values[0])
	f.Add([]byte{1}, 1, []byte{})
	f.Add(append([]byte{1}, make([]byte, 64)...), 2, make([]byte, 32))
	f.Fuzz(func(t *testing.T, c []byte, index int, value []byte) {
		if _, err := ParseCommitments(c); err != nil {
			return
		}
		_ = VerifyShare(c, index, value)
	})
}

func TestCollectorAuditFailureRefusesShare(t *testing.T) {
	f := newFixture(t, 3, 2)
	boom := errors.New("disk full")
	c, err := NewCollector(Config{Params: f.params, Store: f.store, Clock: f.clock.Now,
		OnEvent: func(string, map[string]string) error { return boom }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddShare(f.share(1)); !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
	if p := c.Progress(); p.Presented != 0 {
		t.Fatalf("unaudited share counted: %+v", p)
	}
}
