package acme

import (
	"context"
	"encoding/base64"
	"hash/maphash"
	"math/big"
	"testing"
	"time"
)

// notFoundStore answers every certificate lookup with ErrNotFound; its
// other methods are never called here.
type notFoundStore struct{ Store }

func (notFoundStore) GetCert(context.Context, string) (*Cert, error) { return nil, ErrNotFound }

// finishLocked marks the certificate an order replaces while it holds the
// order's lock. With certificate locks on the same stripes as object locks
// that took the same mutex twice whenever the two names hashed alike,
// about once in 256 renewals, and the finalize hung for good. Here the
// serial is chosen to collide on the object stripes.
func TestMarkReplacedUnderOrderLock(t *testing.T) {
	s := &Server{st: notFoundStore{}, lockSeed: maphash.MakeSeed(), ctx: context.Background()}
	const orderID = "order-1"
	stripe := func(id string) uint64 { return maphash.String(s.lockSeed, id) % uint64(len(s.locks)) }
	var serial *big.Int
	for i := int64(1); ; i++ {
		if stripe("c"+big.NewInt(i).Text(16)) == stripe(orderID) {
			serial = big.NewInt(i)
			break
		}
	}
	certID := base64.RawURLEncoding.EncodeToString([]byte{1, 2, 3}) + "." + base64.RawURLEncoding.EncodeToString(serial.Bytes())
	done := make(chan struct{})
	go func() {
		defer close(done)
		unlock := s.lock(orderID)
		defer unlock()
		s.markReplaced(certID)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("markReplaced under the order's lock did not return: it waits for a lock its caller holds")
	}
}
