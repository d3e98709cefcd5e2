package cli

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/hsmca/hsmca/ca"
)

// syncCountingKey is a module key fake with SyncAudit.
type syncCountingKey struct {
	crypto.Signer
	syncs int
	err   error
}

func (k *syncCountingKey) SyncAudit() error { k.syncs++; return k.err }

// The CA reaches a module key's audit sync through caSigner, the wrapper
// openCA puts around every issuer key.
func TestCASignerForwardsSyncAudit(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	inner := &syncCountingKey{Signer: key}
	var s crypto.Signer = caSigner{inner}
	a, ok := s.(ca.AuditSyncer)
	if !ok {
		t.Fatal("caSigner does not implement ca.AuditSyncer")
	}
	if err := a.SyncAudit(); err != nil || inner.syncs != 1 {
		t.Fatalf("SyncAudit: err %v, %d syncs reached the key; want nil and 1", err, inner.syncs)
	}
	inner.err = errors.New("audit log failed")
	if err := a.SyncAudit(); !errors.Is(err, inner.err) {
		t.Fatalf("SyncAudit error %v, want the key's", err)
	}
	// A plain key has no audit log: nothing to sync, no error.
	if err := (caSigner{key}).SyncAudit(); err != nil {
		t.Fatal(err)
	}
}
