package audit

import (
	"os"
	"testing"
	"time"
)

// A segment cut short under a running log makes the next copy into the
// mapped file fault (SIGBUS); the signer gets an error instead of the
// process dying, and the log refuses from then on.
func TestMappedSegmentFaultIsAnError(t *testing.T) {
	e := newEnvOpts(t, Options{FlushInterval: time.Hour})
	e.sign(t, 0)
	if err := os.Truncate(e.segPath(), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := e.log.BeginSign("issuing", "k1", "SHA-256", digestOf(1)); err == nil {
		t.Fatal("a record was accepted into a segment cut short")
	}
	if _, err := e.log.BeginSign("issuing", "k1", "SHA-256", digestOf(2)); err == nil {
		t.Fatal("log accepted a signature after a failed write")
	}
}

// The segment is allocated ahead of its records while the log is open, and
// Close gives the space back.
func TestSegmentSpaceAllocatedAhead(t *testing.T) {
	e := newEnvOpts(t, Options{FlushInterval: time.Hour})
	e.sign(t, 0)
	st, err := os.Stat(e.segPath())
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() < growStep {
		t.Fatalf("segment is %d bytes while open, want at least %d allocated", st.Size(), growStep)
	}
	e.log.mu.Lock()
	end := e.log.off
	e.log.mu.Unlock()
	e.close()
	if st, err = os.Stat(e.segPath()); err != nil || st.Size() != end {
		t.Fatalf("segment after Close: %v bytes (%v), want %d", st.Size(), err, end)
	}
}
