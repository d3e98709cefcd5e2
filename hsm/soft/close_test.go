package soft

import (
	"errors"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/hsmca/hsmca/hsm"
)

// gateClock is a module clock that, once armed, holds its next caller
// until released: a way to stop an operation at a known point.
type gateClock struct {
	c       *clock
	armed   atomic.Bool
	reached chan struct{}
	release chan struct{}
}

func (g *gateClock) Now() time.Time {
	if g.armed.CompareAndSwap(true, false) {
		close(g.reached)
		<-g.release
	}
	return g.c.Now()
}

// TestCloseWaitsForOperations stops an operation while it holds its
// partition (at its first clock reading: the key's creation time or the
// audit record, both under the operation lock) and closes the module. The
// operation must complete, with its audit record before Close's seal.
func TestCloseWaitsForOperations(t *testing.T) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		event string // the operation's audit record, for the key labelled "new" or "k"
		op    func(p hsm.Partition) error
	}{
		{"generate key", "key-generate", func(p hsm.Partition) error {
			_, err := p.GenerateKey(hsm.ECDSAP256, "new", false)
			return err
		}},
		{"export key", "export", func(p hsm.Partition) error {
			_, err := p.ExportKey("k", id.Recipient().String())
			return err
		}},
		{"destroy key", "key-destroy", func(p hsm.Partition) error { return p.DestroyKey("k") }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "module")
			g := &gateClock{c: &clock{now: time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)},
				reached: make(chan struct{}), release: make(chan struct{})}
			m, err := Open(dir, Options{Clock: g.Now})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { m.Close() })
			shares, err := m.InitPartition(hsm.InitOptions{Partition: "issuing", Shares: 1, Threshold: 1})
			if err != nil {
				t.Fatal(err)
			}
			p, err := m.Partition("issuing")
			if err != nil {
				t.Fatal(err)
			}
			activate(t, p, shares)
			if _, err := p.GenerateKey(hsm.ECDSAP256, "k", true); err != nil {
				t.Fatal(err)
			}

			g.armed.Store(true)
			opDone := make(chan error, 1)
			go func() { opDone <- tc.op(p) }()
			select {
			case <-g.reached:
			case err := <-opDone:
				t.Fatalf("the operation ended (%v) without reading the clock", err)
			case <-time.After(10 * time.Second):
				t.Fatal("the operation did not reach the clock")
			}
			closeDone := make(chan error, 1)
			go func() { closeDone <- m.Close() }()
			// Close must wait for the operation. This wait does not order
			// anything: if Close has not reached the operation lock yet when
			// the operation is released, it takes the lock after it.
			closedEarly := false
			select {
			case err := <-closeDone:
				closedEarly = true
				t.Errorf("Close returned (%v) while the operation held the partition", err)
			case <-time.After(200 * time.Millisecond):
			}
			close(g.release)
			if err := <-opDone; err != nil {
				t.Errorf("operation in progress when Close was called: %v", err)
			}
			if !closedEarly {
				if err := <-closeDone; err != nil {
					t.Fatal(err)
				}
			}
			if err := tc.op(p); !errors.Is(err, hsm.ErrSealed) && !errors.Is(err, errClosed) {
				t.Errorf("operation after Close: %v, want sealed or closed", err)
			}

			m2, err := Open(dir, Options{Clock: g.c.Now})
			if err != nil {
				t.Fatal(err)
			}
			defer m2.Close()
			evs, err := m2.Audit().Events(1, 0)
			if err != nil {
				t.Fatal(err)
			}
			opAt := slices.IndexFunc(evs, func(e hsm.AuditEvent) bool {
				return e.Type == tc.event && (e.Fields["label"] == "new" || e.Type != "key-generate")
			})
			sealAt := slices.IndexFunc(evs, func(e hsm.AuditEvent) bool {
				return e.Type == "seal" && e.Fields["reason"] == "module closed"
			})
			if opAt < 0 || sealAt < 0 || opAt > sealAt {
				t.Errorf("audit: %s record at %d, Close's seal at %d; want the operation's first", tc.event, opAt, sealAt)
			}
			if _, err := m2.Audit().Verify(); err != nil {
				t.Errorf("audit log: %v", err)
			}
		})
	}
}
