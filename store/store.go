// Package store implements the storage interfaces that ca and acme declare
// (ca.Store, acme.Store) on one embedded bbolt file. No bbolt type leaks out
// of this package, so another backend (PostgreSQL) can follow without
// touching callers.
//
// Writes from concurrent requests share commits: CA record writes go to an
// append-only log first (one fdatasync for every write that waits on it,
// folded into bbolt in the background; see calog.go), ACME writes use a
// group commit. Every acknowledged write is durable.
package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Store is the embedded (bbolt) store. It is safe for concurrent use.
type Store struct {
	db    *bolt.DB
	path  string
	calog *caLog // CA record writes, see calog.go
}

// ErrInUse is returned by Open when another process holds the file.
var ErrInUse = errors.New("store: database is in use by another process")

// bucketGroups lists the buckets each consumer needs; ca.go and acme.go
// declare theirs.
func bucketGroups() [][][]byte { return [][][]byte{caBuckets, acmeBuckets} }

// Open opens (creating if needed) the store at path. A second process that
// opens the same file gets ErrInUse after a short wait instead of hanging.
func Open(path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("%w: %s", ErrInUse, path)
		}
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	db.MaxBatchDelay = 2 * time.Millisecond
	err = db.Update(func(tx *bolt.Tx) error {
		for _, group := range bucketGroups() {
			for _, name := range group {
				if _, err := tx.CreateBucketIfNotExists(name); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: create buckets: %w", err)
	}
	lg, err := openCALog(db, path)
	if err != nil {
		db.Close()
		return nil, err
	}
	return &Store{db: db, path: path, calog: lg}, nil
}

// Close folds the CA record log into the database and closes it.
func (s *Store) Close() error {
	err := s.calog.close()
	if cerr := s.db.Close(); err == nil {
		err = cerr
	}
	return err
}

// Ping reports whether the store answers and takes writes (for
// /healthz): it fails once the CA record log has failed (the store then
// refuses every CA write until reopened) or is closed, and when bbolt
// does not answer a read.
func (s *Store) Ping() error {
	s.calog.mu.Lock()
	err := s.calog.usable()
	s.calog.mu.Unlock()
	if err != nil {
		return err
	}
	return s.db.View(func(tx *bolt.Tx) error { return nil })
}
