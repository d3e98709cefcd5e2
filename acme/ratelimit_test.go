package acme_test

import (
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	hacme "github.com/hsmca/hsmca/acme"
)

// Retry-After on rateLimited says when the limiter will let the request
// through: one second earlier it is still refused, at that time it passes.
func TestRateLimitRetryAfter(t *testing.T) {
	body := map[string]any{"identifiers": []map[string]string{{"type": "dns", "value": "rl.example.test"}}}
	cases := []struct {
		name  string
		rl    hacme.RateLimits
		wait  int // seconds until the next token, with the clock frozen
		setup func(a *rawClient)
		send  func(a *rawClient) rawResp
	}{
		{"newOrder", hacme.RateLimits{NewOrderRate: 0.05, NewOrderBurst: 1}, 20,
			func(a *rawClient) { a.register() },
			func(a *rawClient) rawResp { return a.post(a.e.base+"new-order", body, signOpts{}) }},
		{"account", hacme.RateLimits{AccountRate: 0.25, AccountBurst: 1}, 4,
			func(a *rawClient) { a.register() },
			func(a *rawClient) rawResp { return a.post(a.kid, nil, signOpts{}) }},
		{"address", hacme.RateLimits{IPRate: 0.1, IPBurst: 1}, 10,
			func(a *rawClient) {},
			func(a *rawClient) rawResp {
				resp, err := a.e.client.Get(a.e.dir)
				if err != nil {
					a.t.Fatal(err)
				}
				resp.Body.Close()
				return rawResp{code: resp.StatusCode, hdr: resp.Header}
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var mu sync.Mutex
			now := time.Now()
			clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
			advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
			e := newEnvOpts(t, func(cfg *hacme.Config) { cfg.RateLimits = c.rl }, hacme.Options{Clock: clock})
			a := newRaw(t, e)
			c.setup(a)
			if r := c.send(a); r.code == http.StatusTooManyRequests {
				t.Fatalf("first request limited: %s", r.body)
			}
			retry := func() int {
				t.Helper()
				r := c.send(a)
				if r.code != http.StatusTooManyRequests {
					t.Fatalf("request over the limit: %d %s", r.code, r.body)
				}
				n, err := strconv.Atoi(r.hdr.Get("Retry-After"))
				if err != nil {
					t.Fatalf("Retry-After %q", r.hdr.Get("Retry-After"))
				}
				return n
			}
			if got := retry(); got != c.wait {
				t.Fatalf("Retry-After %d, want %d", got, c.wait)
			}
			advance(time.Duration(c.wait-1) * time.Second)
			if got := retry(); got != 1 {
				t.Fatalf("a second before the token: Retry-After %d, want 1", got)
			}
			advance(time.Second)
			if r := c.send(a); r.code == http.StatusTooManyRequests {
				t.Fatalf("refused after waiting as Retry-After said: %s", r.body)
			}
		})
	}
}
