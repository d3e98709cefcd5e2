package quorum

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// openTestDB opens a bbolt file in a temporary directory for the test.
func openTestDB(t *testing.T) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "lockout.db"), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// put writes raw values into bucket b, creating it if needed.
func put(t *testing.T, db *bolt.DB, b string, kv ...string) {
	t.Helper()
	err := db.Update(func(tx *bolt.Tx) error {
		bk, err := tx.CreateBucketIfNotExists([]byte(b))
		if err != nil {
			return err
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if err := bk.Put([]byte(kv[i]), []byte(kv[i+1])); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// get reads a raw value from bucket b.
func get(t *testing.T, db *bolt.DB, b, k string) string {
	t.Helper()
	var v string
	err := db.View(func(tx *bolt.Tx) error {
		if bk := tx.Bucket([]byte(b)); bk != nil {
			v = string(bk.Get([]byte(k)))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func newTestStore(t *testing.T, db *bolt.DB, clock *fakeClock) *BoltLockoutStore {
	t.Helper()
	s, err := NewBoltLockoutStore(db, "lockout", "meta", clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestBoltLockoutStoreRunsInModuleTime checks that the stored times are
// placed, at the next opening, after the running time kept so far: what
// was left of a lockout counts from the reopening, wherever the clock was
// moved in between.
func TestBoltLockoutStoreRunsInModuleTime(t *testing.T) {
	cases := []struct {
		name  string
		moved time.Duration // clock change between the two runs
	}{
		{"clock unchanged", 0},
		{"clock forward past the end", 2 * time.Hour},
		{"clock back", -2 * time.Hour},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			db := openTestDB(t)
			clock := &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
			s := newTestStore(t, db, clock)
			start := clock.Now()
			clock.Add(time.Minute)
			failed := clock.Now()
			st := LockoutState{Failures: 5, WindowStart: start, LockedUntil: failed.Add(15 * time.Minute), LastFailedAt: failed}
			if err := s.SaveLockout("issuing", st); err != nil {
				t.Fatal(err)
			}
			clock.Add(3 * time.Minute)
			if err := s.SaveUptime(); err != nil {
				t.Fatal(err)
			}
			if got := get(t, db, "meta", "uptime"); got != "240000000000" {
				t.Fatalf("stored running time %q, want 4 minutes", got)
			}

			clock.Add(tc.moved)
			reopened := clock.Now()
			got, err := newTestStore(t, db, clock).LoadLockout("issuing")
			if err != nil {
				t.Fatal(err)
			}
			want := LockoutState{Failures: 5, WindowStart: reopened.Add(-4 * time.Minute), LockedUntil: reopened.Add(12 * time.Minute), LastFailedAt: failed}
			if got.Failures != want.Failures || !got.WindowStart.Equal(want.WindowStart) || !got.LockedUntil.Equal(want.LockedUntil) || !got.LastFailedAt.Equal(want.LastFailedAt) {
				t.Fatalf("after reopening: %+v, want %+v", got, want)
			}
		})
	}
}

// TestBoltLockoutStoreReadsStoredRecords checks records as earlier
// versions stored them: wall-clock times (a LockoutState as JSON) are
// returned unchanged, and running-time records, as the soft backend wrote
// them before this store was shared, are placed after the stored running
// time.
func TestBoltLockoutStoreReadsStoredRecords(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := []struct {
		name   string
		uptime string // stored running time, "" for none
		record string
		want   LockoutState
	}{
		{
			name:   "wall clock",
			record: `{"failures":5,"window_start":"2026-01-02T02:50:00Z","locked_until":"2026-01-02T03:10:00Z","last_failed_at":"2026-01-02T02:55:00Z"}`,
			want: LockoutState{Failures: 5, WindowStart: time.Date(2026, 1, 2, 2, 50, 0, 0, time.UTC),
				LockedUntil: time.Date(2026, 1, 2, 3, 10, 0, 0, time.UTC), LastFailedAt: time.Date(2026, 1, 2, 2, 55, 0, 0, time.UTC)},
		},
		{
			name:   "wall clock, failures only",
			record: `{"failures":2,"window_start":"2026-01-02T03:00:00Z"}`,
			want:   LockoutState{Failures: 2, WindowStart: time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)},
		},
		{
			name:   "running time",
			uptime: "3600000000000", // 1h
			record: `{"failures":5,"window_start_uptime":3300000000000,"locked_until_uptime":4200000000000,"last_failed_at":"2025-12-31T00:00:00Z"}`,
			want: LockoutState{Failures: 5, WindowStart: now.Add(-5 * time.Minute), LockedUntil: now.Add(10 * time.Minute),
				LastFailedAt: time.Date(2025, 12, 31, 0, 0, 0, 0, time.UTC)},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			db := openTestDB(t)
			put(t, db, "lockout", "issuing", tc.record)
			if tc.uptime != "" {
				put(t, db, "meta", "uptime", tc.uptime)
			}
			got, err := newTestStore(t, db, &fakeClock{now: now}).LoadLockout("issuing")
			if err != nil {
				t.Fatal(err)
			}
			if got.Failures != tc.want.Failures || !got.WindowStart.Equal(tc.want.WindowStart) || !got.LockedUntil.Equal(tc.want.LockedUntil) || !got.LastFailedAt.Equal(tc.want.LastFailedAt) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestBoltLockoutStoreUptimeNeverGoesBack checks that setting the clock
// back during a run does not make the stored running time go back.
func TestBoltLockoutStoreUptimeNeverGoesBack(t *testing.T) {
	db := openTestDB(t)
	put(t, db, "meta", "uptime", "600000000000") // 10m
	clock := &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	s := newTestStore(t, db, clock)
	clock.Add(2 * time.Minute)
	if err := s.SaveLockout("issuing", LockoutState{Failures: 1, WindowStart: clock.Now()}); err != nil {
		t.Fatal(err)
	}
	clock.Add(-time.Hour)
	if err := s.SaveUptime(); err != nil {
		t.Fatal(err)
	}
	if got := get(t, db, "meta", "uptime"); got != "720000000000" {
		t.Fatalf("stored running time %q, want 12 minutes", got)
	}
}

func TestNewBoltLockoutStoreRejects(t *testing.T) {
	db := openTestDB(t)
	clock := time.Now
	cases := []struct {
		name         string
		db           *bolt.DB
		bucket, meta string
		clock        func() time.Time
		malformed    string // stored running time
		want         string
	}{
		{name: "no database", bucket: "lockout", meta: "meta", clock: clock, want: "needs a database"},
		{name: "no clock", db: db, bucket: "lockout", meta: "meta", want: "a clock"},
		{name: "no bucket", db: db, meta: "meta", clock: clock, want: "bucket names"},
		{name: "no meta bucket", db: db, bucket: "lockout", clock: clock, want: "bucket names"},
		{name: "one bucket for both", db: db, bucket: "lockout", meta: "lockout", clock: clock, want: "bucket names"},
		{name: "malformed running time", db: db, bucket: "lockout", meta: "meta", clock: clock, malformed: "12m", want: "malformed"},
		{name: "negative running time", db: db, bucket: "lockout", meta: "meta", clock: clock, malformed: "-1", want: "malformed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.malformed != "" {
				put(t, db, "meta", "uptime", tc.malformed)
			}
			if _, err := NewBoltLockoutStore(tc.db, tc.bucket, tc.meta, tc.clock); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}
