package store

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// TestPingReportsFailedLog: once the CA record log has failed (a fold that
// cannot commit), the store refuses every CA write until reopened, and
// Ping, which /healthz reports, must say so; after Close it fails too.
func TestPingReportsFailedLog(t *testing.T) {
	ctx := context.Background()
	s, err := Open(filepath.Join(t.TempDir(), "ca.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Ping(); err != nil {
		t.Fatalf("Ping of a fresh store: %v", err)
	}
	s.calog.foldDelay = time.Millisecond
	failFoldOnce(t, "commit")
	na := time.Now().Add(time.Hour).UTC()
	if err := s.ReserveSerial(ctx, rec("aa", "i1", na)); err != nil {
		t.Fatal(err)
	}
	// The write kicked the folder, whose commit fails; wait for the log to
	// record that.
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.calog.mu.Lock()
		failed := s.calog.failed
		s.calog.mu.Unlock()
		if failed != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the injected fold failure never failed the log")
		}
		time.Sleep(5 * time.Millisecond) // polling the background folder
	}
	if err := s.ReserveSerial(ctx, rec("bb", "i1", na)); err == nil {
		t.Fatal("a CA write succeeded after the log failed")
	}
	if err := s.Ping(); err == nil {
		t.Fatal("Ping says the store is fine while it refuses every CA write")
	}
}

// TestPingAfterClose: a closed store does not answer.
func TestPingAfterClose(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "ca.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Ping(); err == nil {
		t.Fatal("Ping of a closed store: no error")
	}
}
