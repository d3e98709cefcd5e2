package cli

import (
	"context"
	"errors"
	"testing"

	"github.com/hsmca/hsmca/acme"
	"github.com/hsmca/hsmca/server"
)

type countingQuorum struct {
	stubQuorum
	calls int
}

func (c *countingQuorum) Status() (server.QuorumStatus, error) {
	c.calls++
	return c.stubQuorum.Status()
}

// TestACMEAdapterSealedProbe: a sealed partition is probed on every
// issuance (an activation takes effect at once) and never trusted as
// active.
func TestACMEAdapterSealedProbe(t *testing.T) {
	q := &countingQuorum{stubQuorum: stubQuorum{st: server.QuorumStatus{Partition: "issuing", State: server.StateCollecting, Threshold: 2}}}
	a := &acmeCA{quorum: q}
	for i := 1; i <= 3; i++ {
		_, err := a.Issue(context.Background(), acme.IssueRequest{CSR: []byte{1}})
		var ue *acme.UnavailableError
		if !errors.As(err, &ue) {
			t.Fatalf("issue %d while sealed: %v", i, err)
		}
		// One probe for the check, one for the 503's detail.
		if q.calls != 2*i {
			t.Fatalf("issue %d: %d quorum probes, want %d", i, q.calls, 2*i)
		}
		if a.activeUntil.Load() != 0 {
			t.Fatalf("a sealed probe was trusted as active")
		}
	}
}
