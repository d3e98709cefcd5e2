package acme

import (
	"context"
	"sync"
	"testing"
)

// memMeta is the part of Store the nonce source uses, in memory.
type memMeta struct {
	Store
	mu sync.Mutex
	m  map[string][]byte
}

func (m *memMeta) GetMeta(_ context.Context, k string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.m[k]
	if !ok {
		return nil, ErrNotFound
	}
	return append([]byte{}, v...), nil
}

func (m *memMeta) PutMeta(_ context.Context, k string, v []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.m == nil {
		m.m = map[string][]byte{}
	}
	if len(v) == 0 {
		delete(m.m, k)
	} else {
		m.m[k] = append([]byte{}, v...)
	}
	return nil
}

func mustNonce(t *testing.T, n *nonceSource) string {
	t.Helper()
	s, err := n.Nonce()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestNonceSingleUse(t *testing.T) {
	st := &memMeta{}
	n, err := newNonceSource(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	a := mustNonce(t, n)
	if !n.Use(a) {
		t.Fatal("fresh nonce refused")
	}
	if n.Use(a) {
		t.Fatal("nonce accepted twice")
	}
	b := []byte(mustNonce(t, n))
	b[3] ^= 1
	if n.Use(string(b)) {
		t.Fatal("tampered nonce accepted")
	}
	for _, bad := range []string{"", "x", "!!!!!!!!!!!!!!!!!!!!!!", "AAAAAAAAAAAAAAAAAAAAAA"} {
		if n.Use(bad) {
			t.Fatalf("%q accepted", bad)
		}
	}
	// A nonce of another server key is refused.
	other, _ := newNonceSource(context.Background(), &memMeta{})
	if n.Use(mustNonce(t, other)) {
		t.Fatal("foreign nonce accepted")
	}
}

func TestNonceWindow(t *testing.T) {
	n, err := newNonceSource(context.Background(), &memMeta{})
	if err != nil {
		t.Fatal(err)
	}
	first := mustNonce(t, n)
	second := mustNonce(t, n)
	var last string
	for i := 0; i < nonceWindow-1; i++ {
		last = mustNonce(t, n)
	}
	if n.Use(first) {
		t.Fatal("nonce older than the window accepted")
	}
	if !n.Use(second) || !n.Use(last) {
		t.Fatal("nonce inside the window refused")
	}
	if len(n.used) != nonceWindow/64 {
		t.Fatal("window grew")
	}
}

func TestNonceRestart(t *testing.T) {
	ctx := context.Background()
	st := &memMeta{}
	n, _ := newNonceSource(ctx, st)
	used, unused := mustNonce(t, n), mustNonce(t, n)
	if !n.Use(used) {
		t.Fatal("refused")
	}
	if err := n.close(ctx); err != nil {
		t.Fatal(err)
	}
	if n.Use(unused) {
		t.Fatal("closed source accepted a nonce")
	}
	n2, err := newNonceSource(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	if n2.Use(used) {
		t.Fatal("used nonce accepted after restart")
	}
	fresh := mustNonce(t, n2)
	if !n2.Use(unused) || n2.Use(unused) {
		t.Fatal("unused nonce must work exactly once after a clean restart")
	}
	if !n2.Use(fresh) {
		t.Fatal("fresh nonce refused")
	}
	// Crash: n2 is not closed. A third start must refuse all of n2's nonces.
	pending := mustNonce(t, n2)
	n3, err := newNonceSource(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	if n3.Use(pending) || n3.Use(unused) || n3.Use(used) {
		t.Fatal("nonce from before a crash accepted")
	}
	if !n3.Use(mustNonce(t, n3)) {
		t.Fatal("fresh nonce refused after crash")
	}
	// The saved window is consumed at start: a crash after a clean start
	// does not bring it back.
	if _, err := st.GetMeta(ctx, metaWindow); err == nil {
		t.Fatal("saved window still present after start")
	}
}

func BenchmarkNonce(b *testing.B) {
	n, _ := newNonceSource(context.Background(), &memMeta{})
	b.ReportAllocs()
	for b.Loop() {
		s, _ := n.Nonce()
		if !n.Use(s) {
			b.Fatal("refused")
		}
	}
}
