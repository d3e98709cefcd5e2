package acme

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"sync"

	"github.com/hsmca/hsmca/internal/p256verify"
)

// p256Tables keeps precomputed verifiers (internal/p256verify) for the
// ES256 account keys that sign many requests. Every request is verified
// (RFC 8555 §6.2), and an order takes about seven, all under the same
// account key: through a table a verification costs about 50 µs instead of
// 93 on the 2-core build VM. A table costs about 0.56 ms to build and
// 92 KiB to keep (mapped outside the Go heap, see internal/p256verify),
// so a key gets one only at its
// p256TableAfter-th successful verification (a client that makes one
// order and leaves never pays for it), and at most p256TablesMax keys have one: the
// first to qualify. Every p256Epoch verifications the tables and counts
// start over, so that the set follows the accounts that are busy now.
type p256Tables struct {
	mu     sync.Mutex
	n      int // verifications counted in this epoch
	uses   map[*ecdsa.PublicKey]int
	tables map[*ecdsa.PublicKey]*p256verify.Key
}

const (
	// p256TableAfter: 16 verifications save about as much as the table
	// costs.
	p256TableAfter = 16
	// p256TablesMax bounds the tables' memory (16 × 92 KiB). With up to
	// 64 tables, then on the Go heap, peak RSS at 64 loadtest clients
	// went from 56-57 to 70-71 MiB, past issue 6's 64 MiB.
	p256TablesMax = 16
	// p256UsesMax bounds the keys counted; when reached, the counts
	// start over.
	p256UsesMax = 4096
	// p256Epoch is how many verifications the set of tables lasts.
	p256Epoch = 1 << 20
)

// get returns pub's table, or nil when pub has none (yet) or is not a
// P-256 key. It counts towards the epoch but not towards pub's table:
// only a signature that verified does that (verified), so requests with
// bad signatures cannot claim the table slots.
func (t *p256Tables) get(pub *ecdsa.PublicKey) *p256verify.Key {
	if pub.Curve != elliptic.P256() {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n++; t.n >= p256Epoch {
		t.n, t.uses, t.tables = 0, nil, nil
	}
	return t.tables[pub]
}

// verified counts one signature that verified under pub without a table,
// and builds pub's table when that makes p256TableAfter; it returns the
// table it built, or nil.
func (t *p256Tables) verified(pub *ecdsa.PublicKey) *p256verify.Key {
	if pub.Curve != elliptic.P256() {
		return nil
	}
	t.mu.Lock()
	if _, ok := t.tables[pub]; ok {
		t.mu.Unlock()
		return nil // another request built it meanwhile
	}
	if t.uses == nil || len(t.uses) >= p256UsesMax {
		t.uses = make(map[*ecdsa.PublicKey]int)
	}
	t.uses[pub]++
	build := t.uses[pub] == p256TableAfter && len(t.tables) < p256TablesMax
	t.mu.Unlock()
	if !build {
		return nil
	}
	k, err := p256verify.New(pub, 4)
	if err != nil {
		return nil // verified the usual way instead
	}
	t.mu.Lock()
	if t.tables == nil {
		t.tables = make(map[*ecdsa.PublicKey]*p256verify.Key)
	}
	if len(t.tables) < p256TablesMax {
		t.tables[pub] = k
	}
	delete(t.uses, pub)
	t.mu.Unlock()
	return k
}
