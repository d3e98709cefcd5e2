package acme_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	hacme "github.com/hsmca/hsmca/acme"
)

// scriptedTarget stands in for the http-01 target (Options.HTTPClient's
// transport): each request gets answer(n, r), n counting requests from 1.
type scriptedTarget struct {
	n      atomic.Int32
	mu     sync.Mutex
	ka     string // the body of a 200 answer
	answer func(n int32, r *http.Request) (int, error)
}

func (s *scriptedTarget) RoundTrip(r *http.Request) (*http.Response, error) {
	code, err := s.answer(s.n.Add(1), r)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	body := s.ka
	s.mu.Unlock()
	if code != http.StatusOK {
		body = ""
	}
	return &http.Response{StatusCode: code, Body: io.NopCloser(strings.NewReader(body)), Request: r, Header: http.Header{}}, nil
}

// after answers 200 after d, unless the request's context ends first.
func after(d time.Duration, r *http.Request) (int, error) {
	select {
	case <-time.After(d):
		return http.StatusOK, nil
	case <-r.Context().Done():
		return 0, r.Context().Err()
	}
}

type challState struct {
	Status     string
	Challenges []struct {
		Type, Status string
		Error        *struct{ Type, Detail string }
	}
}

// startHTTP01 orders name and answers its http-01 challenge with client
// (nil: the test's usual client); it returns the authorization URL.
func startHTTP01(t *testing.T, e *env, a *rawClient, tgt *scriptedTarget, name string, client *http.Client) string {
	t.Helper()
	_, o := a.newOrder(name)
	z := decode[authzResp](t, a.post(o.Authorizations[0], nil, signOpts{}))
	for _, ch := range z.Challenges {
		if ch.Type != "http-01" {
			continue
		}
		tgt.mu.Lock()
		tgt.ka = a.keyAuth(ch.Token)
		tgt.mu.Unlock()
		if client == nil {
			if r := a.post(ch.URL, map[string]any{}, signOpts{}); r.code != 200 {
				t.Fatalf("challenge: %d %s", r.code, r.body)
			}
			continue
		}
		req, _ := http.NewRequest(http.MethodPost, ch.URL, bytes.NewReader(a.sign(ch.URL, []byte("{}"), signOpts{})))
		req.Header.Set("Content-Type", "application/jose+json")
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("the challenge POST got an answer (%d); the test needs the client to give up first", resp.StatusCode)
		}
	}
	return o.Authorizations[0]
}

func waitSettled(t *testing.T, a *rawClient, authzURL string) challState {
	t.Helper()
	var got challState
	waitFor(t, "authorization settled", func() bool {
		got = decode[challState](t, a.post(authzURL, nil, signOpts{}))
		return got.Status == "valid" || got.Status == "invalid"
	})
	return got
}

// The inline first attempt is bounded by 3 s and by the client's request;
// a failure it owes to either does not count. With no retries the pool
// then makes the one attempt with the whole ValidationTimeout; a failure
// of an inline attempt that had the whole timeout is final at once.
func TestInlineAttemptCutShort(t *testing.T) {
	for _, tc := range []struct {
		name       string
		timeout    time.Duration
		answer     func(n int32, r *http.Request) (int, error)
		disconnect bool // the client gives up on the challenge POST
		want       string
		requests   int32
	}{
		// 4 s is past the inline bound but within the timeout.
		{"slow target", 10 * time.Second, func(_ int32, r *http.Request) (int, error) { return after(4*time.Second, r) }, false, "valid", 2},
		// The inline attempt had the whole timeout (2 s): its failure is
		// the one attempt.
		{"timeout within the inline bound", 2 * time.Second, func(_ int32, r *http.Request) (int, error) { return after(time.Hour, r) }, false, "invalid", 1},
		// The client goes away while the inline attempt waits; the target
		// answers the pool's attempt at once.
		{"client disconnects", 2 * time.Second, func(n int32, r *http.Request) (int, error) {
			if n == 1 {
				return after(time.Hour, r)
			}
			return http.StatusOK, nil
		}, true, "valid", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tgt := &scriptedTarget{answer: tc.answer}
			e := newEnvOpts(t, func(c *hacme.Config) {
				c.ValidationRetries = -1
				c.ValidationTimeout = tc.timeout
			}, hacme.Options{HTTPClient: &http.Client{Transport: tgt}})
			a := newRaw(t, e)
			a.register()
			var client *http.Client
			if tc.disconnect {
				client = &http.Client{Transport: e.client.Transport, Timeout: 300 * time.Millisecond}
			}
			authz := startHTTP01(t, e, a, tgt, "slow.example.test", client)
			got := waitSettled(t, a, authz)
			if got.Status != tc.want {
				t.Fatalf("authorization %s, want %s (%+v)", got.Status, tc.want, got)
			}
			if n := tgt.n.Load(); n != tc.requests {
				t.Fatalf("%d requests to the target, want %d", n, tc.requests)
			}
		})
	}
}

// storedChallenge reads the http-01 challenge of the authorization at
// authzURL from the store.
func storedChallenge(t *testing.T, e *env, authzURL string) *hacme.Challenge {
	t.Helper()
	z, err := e.st.GetAuthz(context.Background(), path.Base(authzURL))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range z.Challenges {
		if c.Type == hacme.ChallengeHTTP01 {
			return c
		}
	}
	t.Fatal("no http-01 challenge")
	return nil
}

// ValidationRetries bounds the attempts of a validation across restarts:
// each failed attempt is stored with the challenge, and a restart resumes
// from that count instead of granting a fresh set. The retry delay (an
// hour) keeps the pool from retrying on its own: only restarts run the
// further attempts here.
func TestValidationAttemptsSurviveRestart(t *testing.T) {
	tgt := &scriptedTarget{answer: func(int32, *http.Request) (int, error) { return http.StatusNotFound, nil }}
	e := newEnvOpts(t, func(c *hacme.Config) {
		c.ValidationRetries = 2
		c.ValidationRetryDelay = time.Hour
	}, hacme.Options{HTTPClient: &http.Client{Transport: tgt}})
	a := newRaw(t, e)
	a.register()
	authz := startHTTP01(t, e, a, tgt, "retry.example.test", nil)

	// The inline attempt failed: stored as the first, with its problem
	// in the processing challenge (RFC 8555 §8.2).
	if c := storedChallenge(t, e, authz); c.Status != hacme.StatusProcessing || c.Attempts != 1 || c.Error == nil {
		t.Fatalf("after the inline attempt: %+v, want processing, 1 attempt and its error", c)
	}
	e.restart()
	waitFor(t, "the second attempt stored", func() bool { return storedChallenge(t, e, authz).Attempts == 2 })
	e.restart()
	got := waitSettled(t, a, authz)
	if got.Status != "invalid" {
		t.Fatalf("authorization %s, want invalid", got.Status)
	}
	if n := tgt.n.Load(); n != 3 {
		t.Fatalf("%d attempts, want 3 (1 + ValidationRetries)", n)
	}
	e.restart()
	if work, err := e.st.ListWork(context.Background(), hacme.WorkValidate); err != nil || len(work) != 0 {
		t.Fatalf("validation work after the last attempt: %v %v", work, err)
	}
	if n := tgt.n.Load(); n != 3 {
		t.Fatalf("%d attempts after another restart, want 3", n)
	}
}

// A validation whose stored attempts already use up the budget when the
// server starts (here: ValidationRetries lowered across the restart)
// becomes invalid with the last attempt's problem, without another one.
func TestValidationAttemptsUsedUpAtRestart(t *testing.T) {
	tgt := &scriptedTarget{answer: func(int32, *http.Request) (int, error) { return http.StatusNotFound, nil }}
	e := newEnvOpts(t, func(c *hacme.Config) {
		c.ValidationRetries = 2
		c.ValidationRetryDelay = time.Hour
	}, hacme.Options{HTTPClient: &http.Client{Transport: tgt}})
	a := newRaw(t, e)
	a.register()
	authz := startHTTP01(t, e, a, tgt, "used-up.example.test", nil)
	e.stop()
	e.cfg.ValidationRetries = -1
	e.start()
	got := waitSettled(t, a, authz)
	if got.Status != "invalid" {
		t.Fatalf("authorization %s, want invalid", got.Status)
	}
	for _, c := range got.Challenges {
		if c.Type == "http-01" && (c.Error == nil || !strings.Contains(c.Error.Detail, "404")) {
			t.Fatalf("challenge error %+v, want the last attempt's (HTTP 404)", c.Error)
		}
	}
	if n := tgt.n.Load(); n != 1 {
		t.Fatalf("%d attempts, want 1: the budget was used up before the restart", n)
	}
}
