package store

import (
	"context"
	"runtime"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// A write function that never returns to the committer (runtime.Goexit
// here; a panic inside bbolt's commit would do the same) must not leave
// the group committer busy: the next writers still commit.
func TestGroupCommitSurvivesAnAbandonedLeader(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		s.batch(func(tx *bolt.Tx) error {
			runtime.Goexit()
			return nil
		})
	}()
	<-exited
	done := make(chan error, 1)
	go func() { done <- s.PutMeta(ctx, "after", []byte("x")) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a write after the abandoned commit is still waiting after 30 s")
	}
	if v, err := s.GetMeta(ctx, "after"); err != nil || string(v) != "x" {
		t.Fatalf("GetMeta: %q, %v", v, err)
	}
}
