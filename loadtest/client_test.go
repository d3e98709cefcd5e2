package loadtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"3", 3 * time.Second},
		{" 2 ", 2 * time.Second},
		{"-1", 0},
		{"soon", 0},
		{"99999", time.Minute},
		{now.Add(5 * time.Second).Format(http.TimeFormat), 5 * time.Second},
		{now.Add(-5 * time.Second).Format(http.TimeFormat), 0},
	} {
		if got := parseRetryAfter(tc.in, now); got != tc.want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestParseResponse(t *testing.T) {
	h := func(kv ...string) http.Header {
		x := http.Header{}
		for i := 0; i+1 < len(kv); i += 2 {
			x.Set(kv[i], kv[i+1])
		}
		return x
	}
	now := time.Now()
	for _, tc := range []struct {
		name      string
		status    int
		hdr       http.Header
		body      string
		wantLabel string // "" means no error
	}{
		{"created", 201, h("Location", "https://x/acct/1"), `{}`, ""},
		{"bad nonce", 400, h("Content-Type", "application/problem+json"),
			`{"type":"urn:ietf:params:acme:error:badNonce","detail":"stale"}`, "urn:ietf:params:acme:error:badNonce"},
		{"rate limited json", 429, h("Content-Type", "application/json; charset=utf-8"),
			`{"type":"urn:ietf:params:acme:error:rateLimited"}`, "urn:ietf:params:acme:error:rateLimited"},
		{"html 502", 502, h("Content-Type", "text/html"), `<html>bad gateway</html>`, "client:http-502"},
		{"problem without type", 500, h("Content-Type", "application/problem+json"), `{"detail":"x"}`, "client:http-500"},
		{"garbage problem", 400, h("Content-Type", "application/problem+json"), `{`, "client:http-400"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := parseResponse(tc.status, tc.hdr, []byte(tc.body), now)
			if tc.wantLabel == "" {
				if err != nil {
					t.Fatal(err)
				}
				if r.location != tc.hdr.Get("Location") {
					t.Errorf("location %q", r.location)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			if got := errorLabel(err); got != tc.wantLabel {
				t.Errorf("label %q, want %q", got, tc.wantLabel)
			}
			var p *Problem
			if errors.As(err, &p) && p.Status != tc.status {
				t.Errorf("problem status %d, want %d", p.Status, tc.status)
			}
		})
	}
}

func TestErrorLabel(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&Problem{Type: "urn:ietf:params:acme:error:connection"}, "urn:ietf:params:acme:error:connection"},
		{&Problem{}, "about:blank"},
		{clientErr("transport", "x"), "client:transport"},
		{context.DeadlineExceeded, "client:canceled"},
		{errors.New("x"), "client:other"},
	} {
		if got := errorLabel(tc.err); got != tc.want {
			t.Errorf("errorLabel(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"defaults", Config{URL: "https://127.0.0.1:14000/dir", Orders: 1}, ""},
		{"localhost", Config{URL: "https://localhost/dir", Duration: time.Second}, ""},
		{"ipv6 loopback", Config{URL: "https://[::1]:9/dir", Orders: 1}, ""},
		{"remote refused", Config{URL: "https://acme.example.com/dir", Orders: 1}, "not a loopback host"},
		{"remote allowed", Config{URL: "https://acme.example.com/dir", Orders: 1, AllowRemote: true}, ""},
		{"remote dns refused", Config{URL: "https://127.0.0.1/dir", Orders: 1, DNSAddr: "10.0.0.1:53"}, "not on loopback"},
		{"no bound", Config{URL: "https://127.0.0.1/dir"}, "orders, a duration"},
		{"bad scheme", Config{URL: "ftp://127.0.0.1/dir", Orders: 1}, "not an http(s) URL"},
		{"dns-01 needs dns", Config{URL: "https://127.0.0.1/dir", Orders: 1, Challenge: DNS01}, "--dns-addr"},
		{"bad challenge", Config{URL: "https://127.0.0.1/dir", Orders: 1, Challenge: "tls-sni-01"}, "unknown challenge"},
		{"bad key", Config{URL: "https://127.0.0.1/dir", Orders: 1, KeyType: "dsa"}, "unknown key type"},
		{"too many clients", Config{URL: "https://127.0.0.1/dir", Orders: 1, Clients: MaxClients + 1}, "clients must be"},
		{"too many names", Config{URL: "https://127.0.0.1/dir", Orders: 1, NamesPerOrder: MaxNamesPerOrder + 1}, "names per order"},
		{"bad port", Config{URL: "https://127.0.0.1/dir", Orders: 1, HTTPPort: 70000}, "ports must be"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			err := cfg.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if cfg.Clients != 1 || cfg.Poll != 10*time.Millisecond || cfg.Challenge != HTTP01 || cfg.HTTPPort != 80 || cfg.MaxTime <= 0 || cfg.Domain != "load.test" {
					t.Errorf("defaults not filled: %+v", cfg)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.HasPrefix(err.Error(), "loadtest: ") {
				t.Errorf("err = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func testCertPEM(t testing.TB, names ...string) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "t"}, DNSNames: names,
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func TestCheckChain(t *testing.T) {
	good := testCertPEM(t, "b.load.test", "a.load.test")
	if err := checkChain(good, []string{"a.load.test", "b.load.test"}); err != nil {
		t.Errorf("good chain: %v", err)
	}
	if err := checkChain(good, []string{"a.load.test"}); errorLabel(err) != "client:bad-certificate" {
		t.Errorf("wrong names: %v", err)
	}
	if err := checkChain([]byte("not pem"), []string{"a"}); errorLabel(err) != "client:bad-certificate" {
		t.Errorf("not PEM: %v", err)
	}
}

// TestMaxTime runs against a server that never answers newOrder (a fault
// no real server produces on demand) and checks that the hard cap ends the
// run and counts the orders as unfinished.
func TestMaxTime(t *testing.T) {
	var srv *httptest.Server
	stop := make(chan struct{})
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Replay-Nonce", "n"+time.Now().Format("150405.000000000"))
		switch r.URL.Path {
		case "/dir":
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"newNonce":"` + srv.URL + `/nonce","newAccount":"` + srv.URL + `/acct","newOrder":"` + srv.URL + `/order"}`))
		case "/nonce":
		case "/acct":
			w.Header().Set("Location", srv.URL+"/acct/1")
			w.WriteHeader(http.StatusCreated)
			_, _ = w.Write([]byte(`{"status":"valid"}`))
		case "/order":
			_, _ = io.Copy(io.Discard, r.Body) // lets the server notice the client hanging up
			select {
			case <-r.Context().Done():
			case <-stop:
			}
		}
	}))
	defer srv.Close()
	defer close(stop)
	rep, err := Run(context.Background(), Config{
		URL: srv.URL + "/dir", Clients: 3, Orders: 100, MaxTime: 300 * time.Millisecond,
		HTTPPort: freePort(t),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Stopped != "max-time" || rep.Unfinished != 3 || rep.Orders != 0 || rep.FailedOrders != 0 {
		t.Errorf("stopped %q, unfinished %d, ok %d, failed %d; want max-time, 3, 0, 0", rep.Stopped, rep.Unfinished, rep.Orders, rep.FailedOrders)
	}
}

func FuzzParseResponse(f *testing.F) {
	f.Add(400, "application/problem+json", "3", []byte(`{"type":"urn:ietf:params:acme:error:badNonce","detail":"x","status":400}`))
	f.Add(200, "application/json", "Wed, 21 Oct 2015 07:28:00 GMT", []byte(`{"status":"valid","certificate":"https://x/c"}`))
	f.Add(503, "text/plain", "", []byte("down"))
	f.Fuzz(func(t *testing.T, status int, ct, retry string, body []byte) {
		h := http.Header{}
		h.Set("Content-Type", ct)
		h.Set("Retry-After", retry)
		r, err := parseResponse(status, h, body, time.Now())
		if r == nil {
			t.Fatal("nil response")
		}
		if r.retryAfter < 0 || r.retryAfter > time.Minute {
			t.Fatalf("retry-after %v out of range", r.retryAfter)
		}
		if (err != nil) != (status >= 400) {
			t.Fatalf("status %d: err %v", status, err)
		}
		if err != nil && errorLabel(err) == "client:other" {
			t.Fatalf("unlabelled error %v", err)
		}
	})
}

func FuzzCheckChain(f *testing.F) {
	f.Add(testCertPEM(f, "a.load.test"), "a.load.test")
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), "a")
	f.Fuzz(func(t *testing.T, b []byte, name string) {
		err := checkChain(b, []string{name})
		if err != nil && errorLabel(err) != "client:bad-certificate" {
			t.Fatalf("label %q", errorLabel(err))
		}
	})
}

// TestThrottleRetry checks that a 429 with Retry-After is waited out and
// repeated, and one without Retry-After fails at once.
func TestThrottleRetry(t *testing.T) {
	for _, tc := range []struct {
		name        string
		retryAfter  string
		wantErr     bool
		wantRetried int
	}{
		{"with retry-after", "1", false, 1},
		{"without retry-after", "", true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var srv *httptest.Server
			calls := 0
			srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Replay-Nonce", "n")
				if r.URL.Path != "/acct" {
					return
				}
				calls++
				if calls == 1 {
					if tc.retryAfter != "" {
						w.Header().Set("Retry-After", tc.retryAfter)
					}
					w.Header().Set("Content-Type", "application/problem+json")
					w.WriteHeader(http.StatusTooManyRequests)
					_, _ = w.Write([]byte(`{"type":"urn:ietf:params:acme:error:rateLimited","detail":"slow down"}`))
					return
				}
				w.Header().Set("Location", srv.URL+"/acct/1")
				w.WriteHeader(http.StatusCreated)
			}))
			defer srv.Close()
			var st counters
			c, err := newACMEClient(srv.Client(), directory{NewNonce: srv.URL + "/nonce", NewAccount: srv.URL + "/acct", NewOrder: srv.URL + "/order"}, time.Millisecond, &st)
			if err != nil {
				t.Fatal(err)
			}
			err = c.register(context.Background())
			if (err != nil) != tc.wantErr {
				t.Fatalf("register: %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr && errorLabel(err) != "urn:ietf:params:acme:error:rateLimited" {
				t.Errorf("label %q", errorLabel(err))
			}
			if got := st.retries["urn:ietf:params:acme:error:rateLimited"]; got != tc.wantRetried {
				t.Errorf("retried %d, want %d", got, tc.wantRetried)
			}
			if !tc.wantErr && (c.kid != srv.URL+"/acct/1" || st.retryWaits.Load() != 1) {
				t.Errorf("kid %q, retry waits %d", c.kid, st.retryWaits.Load())
			}
		})
	}
}
