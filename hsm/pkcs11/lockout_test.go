//go:build cgo

package pkcs11

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/hsmca/hsmca/hsm"
)

// testClock is a clock that tests move by hand.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

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
	needSoftHSM(t)
	cases := []struct {
		name  string
		token string
		moved time.Duration // clock change while the module is closed
	}{
		{"clock unchanged", tokModTimeSame, 0},
		{"clock forward past the end", tokModTimeFwd, 2 * time.Hour},
		{"clock back", tokModTimeBack, -2 * time.Hour},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clock := &testClock{now: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
			// 5 bad shares lock for 15 minutes.
			mod, shares, dir := initModule(t, tc.token, hsm.InitOptions{Partition: "root", Shares: 3, Threshold: 2}, Options{Clock: clock.Now})
			p, err := mod.Partition("root")
			if err != nil {
				t.Fatal(err)
			}
			presentBad(t, p, shares[0], 5)
			clock.Add(4 * time.Minute)
			if err := mod.Close(); err != nil {
				t.Fatal(err)
			}
			clock.Add(tc.moved)
			mod, err = Open(dir, Options{Clock: clock.Now})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { mod.Close() })
			reopened := clock.Now()
			if p, err = mod.Partition("root"); err != nil {
				t.Fatal(err)
			}
			st, err := p.Status()
			if want := reopened.Add(11 * time.Minute); err != nil || !st.LockedUntil.Equal(want) || st.FailedShares != 5 {
				t.Fatalf("status after reopening: locked until %s, %d failed shares (%v); want until %s, 5", st.LockedUntil, st.FailedShares, err, want)
			}
			wantLocked(t, p, shares[1], "at reopening")
			clock.Add(11*time.Minute - time.Second)
			wantLocked(t, p, shares[1], "a second before the end")
			clock.Add(time.Second)
			if st := activate(t, p, shares[1], shares[2]); st.State != hsm.StateActive {
				t.Fatalf("after the lockout: %+v", st)
			}
		})
	}
}
