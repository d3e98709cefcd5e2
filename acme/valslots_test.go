package acme_test

import (
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	hacme "github.com/hsmca/hsmca/acme"
)

// holdingHTTP01 serves http-01 key authorizations, holding every request
// until release is closed, and records how many it held at once.
type holdingHTTP01 struct {
	port    int
	release chan struct{}
	mu      sync.Mutex
	keyAuth map[string]string
	now     int // requests being held
	peak    int // the most held at once
}

func newHoldingHTTP01(t *testing.T) *holdingHTTP01 {
	t.Helper()
	h := &holdingHTTP01{release: make(chan struct{}), keyAuth: map[string]string{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	h.port = ln.Addr().(*net.TCPAddr).Port
	return h
}

func (h *holdingHTTP01) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	h.now++
	h.peak = max(h.peak, h.now)
	ka := h.keyAuth[strings.TrimPrefix(r.URL.Path, "/.well-known/acme-challenge/")]
	h.mu.Unlock()
	defer func() { h.mu.Lock(); h.now--; h.mu.Unlock() }()
	select {
	case <-h.release:
		w.Write([]byte(ka))
	case <-r.Context().Done():
	}
}

func (h *holdingHTTP01) counts() (now, peak int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.now, h.peak
}

// The first validation attempt, which a challenge POST runs inline, takes
// one of the validation_workers slots like the pool's attempts: with one
// slot busy, a second challenge POST answers processing at once and its
// attempt waits for the slot, so no more outbound validations run at once
// than the pool allows.
func TestFirstAttemptTakesAValidationSlot(t *testing.T) {
	h := newHoldingHTTP01(t)
	e := newEnv(t, func(c *hacme.Config) {
		c.ValidationWorkers = 1
		c.HTTP01Port = h.port
	})
	type challenge struct{ url, order string }
	var chs []challenge
	var clients []*rawClient
	for i, name := range []string{"slot1.example.test", "slot2.example.test"} {
		c := newRaw(t, e)
		c.register()
		u, o := c.newOrder(name)
		z := decode[authzResp](t, c.post(o.Authorizations[0], nil, signOpts{}))
		for _, ch := range z.Challenges {
			if ch.Type == "http-01" {
				h.mu.Lock()
				h.keyAuth[ch.Token] = c.keyAuth(ch.Token)
				h.mu.Unlock()
				chs = append(chs, challenge{ch.URL, u})
			}
		}
		if len(chs) != i+1 {
			t.Fatal("no http-01 challenge")
		}
		clients = append(clients, c)
	}
	first := make(chan rawResp, 1)
	go func() { first <- clients[0].post(chs[0].url, map[string]any{}, signOpts{}) }()
	waitFor(t, "the first attempt to reach the challenge server", func() bool { n, _ := h.counts(); return n == 1 })

	r := clients[1].post(chs[1].url, map[string]any{}, signOpts{})
	if _, peak := h.counts(); peak != 1 {
		t.Fatalf("%d validations ran at once with validation_workers 1", peak)
	}
	if st := decode[struct{ Status string }](t, r).Status; r.code != 200 || st != "processing" || r.hdr.Get("Retry-After") == "" {
		t.Fatalf("challenge POST with no free slot: %d %s %v; want processing with Retry-After", r.code, r.body, r.hdr)
	}
	close(h.release)
	if r := <-first; r.code != 200 {
		t.Fatalf("first challenge: %d %s", r.code, r.body)
	}
	for i, c := range clients {
		c.waitOrder(chs[i].order, "ready")
	}
	if _, peak := h.counts(); peak != 1 {
		t.Fatalf("%d validations ran at once with validation_workers 1", peak)
	}
}
