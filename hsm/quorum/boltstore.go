package quorum

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
)

// uptimeKey holds, in the meta bucket, the module's running time in
// nanoseconds (decimal) as of its last lockout change or SaveUptime.
var uptimeKey = []byte("uptime")

// BoltLockoutStore keeps the partitions' lockout state in a bbolt bucket,
// one JSON value per partition, in module running time, the way a hardware
// module's lockout timer runs only while the module does. The module's
// total running time is kept across restarts, and a failure window's start
// and a lockout's end are stored as points of it rather than as wall-clock
// times. When the store is opened they are placed relative to the clock
// reading at that moment, so a lockout lasts what was left of it, counted
// from the reopening, however the wall clock moved while the module was
// closed: neither moving the clock forward nor moving it back ends it early.
// Within one run the collector compares them with the module clock, whose
// monotonic reading (time.Now) ignores clock changes.
//
// The running time is written with every lockout change and by SaveUptime,
// which the backend calls when it closes the module. A run that ends
// without it (a crash) loses the running time since the last change, so
// its lockouts last longer after the restart, by at most their duration;
// they never last less.
//
// A BoltLockoutStore is for one run of one module: open a new one each
// time the module is opened. It is safe for concurrent use.
type BoltLockoutStore struct {
	db     *bolt.DB
	bucket []byte
	meta   []byte
	clock  func() time.Time
	opened time.Time     // the clock when the store was opened
	base   time.Duration // the running time then
}

var _ LockoutStore = (*BoltLockoutStore)(nil)

// storedLockout is a LockoutState as stored. WindowStart and LockedUntil
// are module running time; LastFailedAt, only reported, is wall-clock time.
type storedLockout struct {
	Failures     int            `json:"failures"`
	WindowStart  *time.Duration `json:"window_start_uptime,omitempty"`
	LockedUntil  *time.Duration `json:"locked_until_uptime,omitempty"`
	LastFailedAt time.Time      `json:"last_failed_at,omitzero"`
	// Wall-clock times, as the store kept them before it kept the module's
	// running time (a LockoutState encoded as JSON); used only without the
	// fields above.
	WallWindowStart time.Time `json:"window_start,omitzero"`
	WallLockedUntil time.Time `json:"locked_until,omitzero"`
}

// NewBoltLockoutStore opens the lockout state kept in db: the records in
// bucket and the module's running time under the key "uptime" of
// metaBucket, a bucket the backend may use for other keys too. It creates
// both buckets if needed and reads the running time. clock must be the
// clock that the partitions' collectors use (Config.Clock).
func NewBoltLockoutStore(db *bolt.DB, bucket, metaBucket string, clock func() time.Time) (*BoltLockoutStore, error) {
	if db == nil || clock == nil {
		return nil, errors.New("quorum: lockout store needs a database and a clock")
	}
	if bucket == "" || metaBucket == "" || bucket == metaBucket {
		return nil, errors.New("quorum: lockout store needs two distinct bucket names")
	}
	s := &BoltLockoutStore{db: db, bucket: []byte(bucket), meta: []byte(metaBucket), clock: clock}
	err := db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(s.bucket); err != nil {
			return err
		}
		mb, err := tx.CreateBucketIfNotExists(s.meta)
		if err != nil {
			return err
		}
		s.base, err = storedUptime(mb)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("quorum: lockout state: %w", err)
	}
	s.opened = clock()
	return s, nil
}

// storedUptime reads the running time from the meta bucket, zero if none.
func storedUptime(mb *bolt.Bucket) (time.Duration, error) {
	v := mb.Get(uptimeKey)
	if v == nil {
		return 0, nil
	}
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("stored running time %q is malformed", v)
	}
	return time.Duration(n), nil
}

// at is the clock time at which the module's running time reaches u.
func (s *BoltLockoutStore) at(u time.Duration) time.Time { return s.opened.Add(u - s.base) }

// uptime is the module's running time at clock time t.
func (s *BoltLockoutStore) uptime(t time.Time) time.Duration { return s.base + t.Sub(s.opened) }

// LoadLockout returns a partition's stored state, zero if none, with its
// times placed on the clock of this run.
func (s *BoltLockoutStore) LoadLockout(partition string) (LockoutState, error) {
	var st LockoutState
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(s.bucket).Get([]byte(partition))
		if v == nil {
			return nil
		}
		var r storedLockout
		if err := json.Unmarshal(v, &r); err != nil {
			return err
		}
		st = LockoutState{Failures: r.Failures, WindowStart: r.WallWindowStart, LockedUntil: r.WallLockedUntil, LastFailedAt: r.LastFailedAt}
		if r.WindowStart != nil {
			st.WindowStart = s.at(*r.WindowStart)
		}
		if r.LockedUntil != nil {
			st.LockedUntil = s.at(*r.LockedUntil)
		}
		return nil
	})
	if err != nil {
		return LockoutState{}, fmt.Errorf("quorum: load lockout of %s: %w", partition, err)
	}
	return st, nil
}

// SaveLockout stores a partition's state, and the running time so far,
// durably before returning.
func (s *BoltLockoutStore) SaveLockout(partition string, st LockoutState) error {
	r := storedLockout{Failures: st.Failures, LastFailedAt: st.LastFailedAt}
	if !st.WindowStart.IsZero() {
		u := s.uptime(st.WindowStart)
		r.WindowStart = &u
	}
	if !st.LockedUntil.IsZero() {
		u := s.uptime(st.LockedUntil)
		r.LockedUntil = &u
	}
	v, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("quorum: save lockout of %s: %w", partition, err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(s.bucket).Put([]byte(partition), v); err != nil {
			return err
		}
		return s.putUptime(tx)
	})
	if err != nil {
		return fmt.Errorf("quorum: save lockout of %s: %w", partition, err)
	}
	return nil
}

// SaveUptime stores the running time so far. A backend calls it when it
// closes the module, before closing db.
func (s *BoltLockoutStore) SaveUptime() error {
	if err := s.db.Update(s.putUptime); err != nil {
		return fmt.Errorf("quorum: save running time: %w", err)
	}
	return nil
}

func (s *BoltLockoutStore) putUptime(tx *bolt.Tx) error {
	mb := tx.Bucket(s.meta)
	stored, err := storedUptime(mb)
	if err != nil {
		return err
	}
	// The running time never goes back: not below what it was at opening
	// when the clock is set back during the run, nor below what a
	// concurrent save, which read the clock later, has written.
	u := max(s.uptime(s.clock()), s.base, stored)
	return mb.Put(uptimeKey, []byte(strconv.FormatInt(int64(u), 10)))
}
