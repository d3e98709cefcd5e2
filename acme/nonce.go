package acme

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
)

// Nonces (RFC 8555 §6.5) are counters sealed with a server key, so that the
// server keeps no table that grows with traffic and a restart neither
// forgets the unused ones nor re-accepts a used one.
//
// A nonce is the AES-128 encryption of one block: the 64-bit counter
// followed by a fixed 64-bit tag. Decrypting a nonce and finding the tag
// authenticates the counter (a forgery succeeds with probability 2^-64).
// The server issues counters in order and keeps a sliding window of the
// last nonceWindow counters as a bitmap of used ones: a counter below the
// window floor, at or above the next counter, or already marked, is
// refused. Memory is constant (nonceWindow bits); a nonce that has fallen
// out of the window is refused as stale and the client simply retries with
// the fresh nonce that comes with every badNonce answer.
//
// Durability: the store holds the key and a reservation, a counter value
// the server has not issued yet. Before issuing counter reservation, the
// server raises it by nonceChunk and writes it (one write per nonceChunk
// nonces). On a clean Close the window (floor, next counter, bitmap) is
// saved too. At start a saved window is loaded and deleted at once, so
// pre-restart nonces that were not used still work exactly once; after a
// crash there is no saved window and the floor starts at the reservation,
// above every counter ever issued, so all earlier nonces are refused and
// none can be replayed.
type nonceSource struct {
	st    Store
	block cipher.Block
	tag   uint64

	mu       sync.Mutex
	next     uint64
	floor    uint64
	reserved uint64
	used     []uint64 // bitmap indexed by counter % nonceWindow
	closed   bool
}

const (
	nonceWindow = 1 << 16
	nonceChunk  = 1 << 20
	metaKey     = "nonce-key"
	metaReserve = "nonce-reserve"
	metaWindow  = "nonce-window"
)

func newNonceSource(ctx context.Context, st Store) (*nonceSource, error) {
	key, err := st.GetMeta(ctx, metaKey)
	if errors.Is(err, ErrNotFound) || (err == nil && len(key) != 16) {
		key = make([]byte, 16)
		rand.Read(key)
		if err := st.PutMeta(ctx, metaKey, key); err != nil {
			return nil, fmt.Errorf("acme: nonce key: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("acme: nonce key: %w", err)
	}
	block, _ := aes.NewCipher(key)
	n := &nonceSource{st: st, block: block, used: make([]uint64, nonceWindow/64)}
	var tb [16]byte
	block.Encrypt(tb[:], tb[:]) // derive the tag from the key
	n.tag = binary.BigEndian.Uint64(tb[:8])

	if b, err := st.GetMeta(ctx, metaReserve); err == nil && len(b) == 8 {
		n.reserved = binary.BigEndian.Uint64(b)
	} else if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("acme: nonce state: %w", err)
	}
	n.next, n.floor = n.reserved, n.reserved
	if w, err := st.GetMeta(ctx, metaWindow); err == nil && len(w) == 16+nonceWindow/8 {
		floor := binary.BigEndian.Uint64(w[:8])
		next := binary.BigEndian.Uint64(w[8:16])
		if floor <= next && next <= n.reserved && next-floor <= nonceWindow {
			n.floor, n.next = floor, next
			for i := range n.used {
				n.used[i] = binary.BigEndian.Uint64(w[16+8*i:])
			}
		}
		// Forget the window before serving: a crash from here on must
		// not bring it back.
		if err := st.PutMeta(ctx, metaWindow, nil); err != nil {
			return nil, fmt.Errorf("acme: nonce state: %w", err)
		}
	}
	if err := n.reserveLocked(ctx); err != nil {
		return nil, err
	}
	return n, nil
}

func (n *nonceSource) reserveLocked(ctx context.Context) error {
	r := n.next + nonceChunk
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], r)
	if err := n.st.PutMeta(ctx, metaReserve, b[:]); err != nil {
		return fmt.Errorf("acme: nonce reservation: %w", err)
	}
	n.reserved = r
	return nil
}

// Nonce returns a fresh nonce.
func (n *nonceSource) Nonce() (string, error) {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return "", errors.New("acme: server closed")
	}
	if n.next >= n.reserved {
		if err := n.reserveLocked(context.Background()); err != nil {
			n.mu.Unlock()
			return "", err
		}
	}
	c := n.next
	n.next++
	n.used[(c%nonceWindow)/64] &^= 1 << (c % 64)
	if c-n.floor >= nonceWindow {
		n.floor = c - nonceWindow + 1
	}
	n.mu.Unlock()
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], c)
	binary.BigEndian.PutUint64(b[8:], n.tag)
	n.block.Encrypt(b[:], b[:])
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// Use consumes a nonce: it reports whether the nonce is authentic, in the
// window and unused, and marks it used.
func (n *nonceSource) Use(s string) bool {
	if len(s) != 22 {
		return false
	}
	var b [16]byte
	if _, err := base64.RawURLEncoding.Decode(b[:], []byte(s)); err != nil {
		return false
	}
	n.block.Decrypt(b[:], b[:])
	if binary.BigEndian.Uint64(b[8:]) != n.tag {
		return false
	}
	c := binary.BigEndian.Uint64(b[:8])
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed || c < n.floor || c >= n.next {
		return false
	}
	w, bit := (c%nonceWindow)/64, uint64(1)<<(c%64)
	if n.used[w]&bit != 0 {
		return false
	}
	n.used[w] |= bit
	return true
}

// close saves the window so that unused nonces survive a clean restart.
func (n *nonceSource) close(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	w := make([]byte, 16+nonceWindow/8)
	binary.BigEndian.PutUint64(w[:8], n.floor)
	binary.BigEndian.PutUint64(w[8:16], n.next)
	for i, u := range n.used {
		binary.BigEndian.PutUint64(w[16+8*i:], u)
	}
	return n.st.PutMeta(ctx, metaWindow, w)
}
