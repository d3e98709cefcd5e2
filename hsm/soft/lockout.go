package soft

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/hsmca/hsmca/hsm/quorum"
	bolt "go.etcd.io/bbolt"
)

// uptimeKey holds, in the meta bucket, the module's running time in
// nanoseconds (decimal) as of its last lockout change or Close.
var uptimeKey = []byte("uptime")

// lockoutStore keeps the partitions' lockout state in module running time,
// the way a hardware module's lockout timer runs only while the module
// does. The module's total running time is kept across restarts, and a
// failure window's start and a lockout's end are stored as points of it
// rather than as wall-clock times. At Open they are placed relative to the
// clock reading at Open, so a lockout lasts what was left of it, counted
// from Open, however the wall clock moved while the module was closed:
// neither moving the clock forward nor moving it back ends it early.
// Within one run the collector compares them with the module clock, whose
// monotonic reading (time.Now) ignores clock changes.
//
// The running time is written with every lockout change and at Close. A
// run that ends without Close (a crash) loses the running time since the
// last change, so its lockouts last longer after the restart, by at most
// their duration; they never last less.
type lockoutStore struct {
	db     *bolt.DB
	clock  func() time.Time
	opened time.Time     // the clock at Open
	base   time.Duration // the running time at Open
}

var _ quorum.LockoutStore = (*lockoutStore)(nil)

// storedLockout is a quorum.LockoutState as stored. WindowStart and
// LockedUntil are module running time; LastFailedAt, only reported, is
// wall-clock time.
type storedLockout struct {
	Failures     int            `json:"failures"`
	WindowStart  *time.Duration `json:"window_start_uptime,omitempty"`
	LockedUntil  *time.Duration `json:"locked_until_uptime,omitempty"`
	LastFailedAt time.Time      `json:"last_failed_at,omitzero"`
	// Wall-clock times, as quorum.BoltLockoutStore stored them before the
	// module kept its running time; used only without the fields above.
	WallWindowStart time.Time `json:"window_start,omitzero"`
	WallLockedUntil time.Time `json:"locked_until,omitzero"`
}

// openLockoutStore reads the module's running time and creates the lockout
// bucket if needed. The meta bucket must exist.
func openLockoutStore(db *bolt.DB, clock func() time.Time) (*lockoutStore, error) {
	s := &lockoutStore{db: db, clock: clock}
	err := db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists([]byte(lockoutBucket)); err != nil {
			return err
		}
		v := tx.Bucket(metaBucket).Get(uptimeKey)
		if v == nil {
			return nil
		}
		n, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("stored running time %q is malformed", v)
		}
		s.base = time.Duration(n)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("soft: lockout state: %w", err)
	}
	s.opened = clock()
	return s, nil
}

// at is the clock time at which the module's running time reaches u.
func (s *lockoutStore) at(u time.Duration) time.Time { return s.opened.Add(u - s.base) }

// uptime is the module's running time at clock time t.
func (s *lockoutStore) uptime(t time.Time) time.Duration { return s.base + t.Sub(s.opened) }

// LoadLockout returns a partition's stored state with its times placed on
// the module clock of this run.
func (s *lockoutStore) LoadLockout(partition string) (quorum.LockoutState, error) {
	var st quorum.LockoutState
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket([]byte(lockoutBucket)).Get([]byte(partition))
		if v == nil {
			return nil
		}
		var r storedLockout
		if err := json.Unmarshal(v, &r); err != nil {
			return err
		}
		st = quorum.LockoutState{Failures: r.Failures, WindowStart: r.WallWindowStart, LockedUntil: r.WallLockedUntil, LastFailedAt: r.LastFailedAt}
		if r.WindowStart != nil {
			st.WindowStart = s.at(*r.WindowStart)
		}
		if r.LockedUntil != nil {
			st.LockedUntil = s.at(*r.LockedUntil)
		}
		return nil
	})
	if err != nil {
		return quorum.LockoutState{}, fmt.Errorf("soft: load lockout of %s: %w", partition, err)
	}
	return st, nil
}

// SaveLockout stores a partition's state, and the running time so far,
// durably before returning.
func (s *lockoutStore) SaveLockout(partition string, st quorum.LockoutState) error {
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
		return err
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket([]byte(lockoutBucket)).Put([]byte(partition), v); err != nil {
			return err
		}
		return s.putUptime(tx)
	})
	if err != nil {
		return fmt.Errorf("soft: save lockout of %s: %w", partition, err)
	}
	return nil
}

// saveUptime stores the running time so far; Close calls it.
func (s *lockoutStore) saveUptime() error {
	if err := s.db.Update(s.putUptime); err != nil {
		return fmt.Errorf("soft: save running time: %w", err)
	}
	return nil
}

func (s *lockoutStore) putUptime(tx *bolt.Tx) error {
	// A clock set back during the run must not make the running time go
	// below what it was at Open.
	u := max(s.uptime(s.clock()), s.base)
	return tx.Bucket(metaBucket).Put(uptimeKey, []byte(strconv.FormatInt(int64(u), 10)))
}
