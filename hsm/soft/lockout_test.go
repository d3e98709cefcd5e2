package soft

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/hsmca/hsmca/hsm"
	bolt "go.etcd.io/bbolt"
)

// presentBad presents n altered copies of share s and expects each to be
// refused as a bad share.
func presentBad(t *testing.T, p hsm.Partition, s hsm.Share, n int) {
	t.Helper()
	bad := s
	bad.Value = bytes.Clone(s.Value)
	bad.Value[0] ^= 1
	for i := 1; i <= n; i++ {
		var serr *hsm.ShareError
		if _, err := p.AddShare(bad); !errors.As(err, &serr) {
			t.Fatalf("bad share %d: %v", i, err)
		}
	}
}

// wantLocked fails unless a good share is refused with *hsm.LockedError.
func wantLocked(t *testing.T, p hsm.Partition, s hsm.Share, when string) {
	t.Helper()
	var lerr *hsm.LockedError
	if _, err := p.AddShare(s); !errors.As(err, &lerr) {
		t.Fatalf("%s: %v, want the partition locked out", when, err)
	}
}

// TestLockoutRunsInModuleTime checks that a lockout lasts its full
// duration of the module's running time across a restart: what was left of
// it at Close counts from the reopening, wherever the clock was moved while
// the module was closed.
func TestLockoutRunsInModuleTime(t *testing.T) {
	cases := []struct {
		name  string
		moved time.Duration // clock change while the module is closed
	}{
		{"clock unchanged", 0},
		{"clock forward past the end", 2 * time.Hour},
		{"clock back", -2 * time.Hour},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			shares := f.init(t, "issuing", 3, 2, hsm.PolicyOnline) // 5 bad shares lock for 15 minutes
			presentBad(t, f.part(t, "issuing"), shares[0], 5)
			f.clock.Add(4 * time.Minute)
			if err := f.m.Close(); err != nil {
				t.Fatal(err)
			}
			f.clock.Add(tc.moved)
			f.open(t)
			reopened := f.clock.Now()
			p := f.part(t, "issuing")
			st, err := p.Status()
			if want := reopened.Add(11 * time.Minute); err != nil || !st.LockedUntil.Equal(want) || st.FailedShares != 5 {
				t.Fatalf("status after reopening: locked until %s, %d failed shares (%v); want until %s, 5", st.LockedUntil, st.FailedShares, err, want)
			}
			wantLocked(t, p, shares[1], "at reopening")
			f.clock.Add(11*time.Minute - time.Second)
			wantLocked(t, p, shares[1], "a second before the end")
			f.clock.Add(time.Second)
			activate(t, p, shares[1:])
		})
	}
}

// TestFailureWindowRunsInModuleTime checks that bad shares counted before a
// restart still count after it when the clock was moved forward meanwhile.
func TestFailureWindowRunsInModuleTime(t *testing.T) {
	f := newFixture(t)
	shares := f.init(t, "issuing", 3, 2, hsm.PolicyOnline)
	presentBad(t, f.part(t, "issuing"), shares[0], 4)
	if err := f.m.Close(); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(24 * time.Hour)
	f.open(t)
	p := f.part(t, "issuing")
	presentBad(t, p, shares[0], 1)
	wantLocked(t, p, shares[1], "after the fifth bad share")
}

// TestLockoutWallClockRecord checks that a lockout stored with wall-clock
// times, as modules stored it before they kept their running time, is
// still enforced.
func TestLockoutWallClockRecord(t *testing.T) {
	f := newFixture(t)
	shares := f.init(t, "issuing", 3, 2, hsm.PolicyOnline)
	if err := f.m.Close(); err != nil {
		t.Fatal(err)
	}
	now := f.clock.Now()
	db, err := bolt.Open(filepath.Join(f.dir, FileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := fmt.Sprintf(`{"failures":5,"window_start":%q,"locked_until":%q}`,
		now.Format(time.RFC3339Nano), now.Add(15*time.Minute).Format(time.RFC3339Nano))
	err = db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte(lockoutBucket)).Put([]byte("issuing"), []byte(rec)) })
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Add(5 * time.Minute)
	f.open(t)
	p := f.part(t, "issuing")
	if st, err := p.Status(); err != nil || !st.LockedUntil.Equal(now.Add(15*time.Minute)) {
		t.Fatalf("status: locked until %s (%v), want %s", st.LockedUntil, err, now.Add(15*time.Minute))
	}
	wantLocked(t, p, shares[1], "with the stored lockout")
	f.clock.Add(10 * time.Minute)
	activate(t, p, shares[1:])
}
