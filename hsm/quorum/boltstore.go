package quorum

import (
	"encoding/json"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// BoltLockoutStore keeps LockoutState in one bbolt bucket, one JSON value
// per partition, so that a lockout survives restarts of the module.
type BoltLockoutStore struct {
	db     *bolt.DB
	bucket []byte
}

var _ LockoutStore = (*BoltLockoutStore)(nil)

// NewBoltLockoutStore uses (and creates if needed) the named bucket of db.
func NewBoltLockoutStore(db *bolt.DB, bucket string) (*BoltLockoutStore, error) {
	if db == nil || bucket == "" {
		return nil, errors.New("quorum: lockout store needs a database and a bucket name")
	}
	s := &BoltLockoutStore{db: db, bucket: []byte(bucket)}
	if !db.IsReadOnly() {
		err := db.Update(func(tx *bolt.Tx) error {
			_, err := tx.CreateBucketIfNotExists(s.bucket)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("quorum: create bucket %s: %w", bucket, err)
		}
	}
	return s, nil
}

// LoadLockout returns the stored state, zero if none.
func (s *BoltLockoutStore) LoadLockout(partition string) (LockoutState, error) {
	var st LockoutState
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(s.bucket)
		if b == nil {
			return nil
		}
		v := b.Get([]byte(partition))
		if v == nil {
			return nil
		}
		return json.Unmarshal(v, &st)
	})
	if err != nil {
		return LockoutState{}, fmt.Errorf("quorum: load lockout of %s: %w", partition, err)
	}
	return st, nil
}

// SaveLockout stores st durably before returning.
func (s *BoltLockoutStore) SaveLockout(partition string, st LockoutState) error {
	v, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(s.bucket)
		if err != nil {
			return err
		}
		return b.Put([]byte(partition), v)
	})
}
