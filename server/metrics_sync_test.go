package server

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hsmca/hsmca/ca"
)

type syncCountingKey struct {
	crypto.Signer
	syncs int
}

func (k *syncCountingKey) SyncAudit() error { k.syncs++; return nil }

// The signature-counting wrapper keeps the module key's audit sync
// reachable for the CA.
func TestCountingSignerForwardsSyncAudit(t *testing.T) {
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	inner := &syncCountingKey{Signer: key}
	a, ok := m.CountingSigner("issuing-1", inner).(ca.AuditSyncer)
	if !ok {
		t.Fatal("the counting signer does not implement ca.AuditSyncer")
	}
	if err := a.SyncAudit(); err != nil || inner.syncs != 1 {
		t.Fatalf("SyncAudit: err %v, %d syncs reached the key; want nil and 1", err, inner.syncs)
	}
}
