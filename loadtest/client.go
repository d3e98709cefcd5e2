package loadtest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// maxBody bounds every response body the client reads.
const maxBody = 1 << 20

// directory is the ACME directory object (RFC 8555 §7.1.1).
type directory struct {
	NewNonce   string `json:"newNonce"`
	NewAccount string `json:"newAccount"`
	NewOrder   string `json:"newOrder"`
}

// order is the ACME order object (RFC 8555 §7.1.3).
type order struct {
	Status         string   `json:"status"`
	Authorizations []string `json:"authorizations"`
	Finalize       string   `json:"finalize"`
	Certificate    string   `json:"certificate"`
	Error          *Problem `json:"error"`
}

// authorization is the ACME authorization object (RFC 8555 §7.1.4).
type authorization struct {
	Status     string `json:"status"`
	Identifier struct {
		Type  string `json:"type"`
		Value string `json:"value"`
	} `json:"identifier"`
	Challenges []challenge `json:"challenges"`
	Wildcard   bool        `json:"wildcard"`
}

// challenge is the ACME challenge object (RFC 8555 §7.1.5, §8).
type challenge struct {
	Type   string   `json:"type"`
	URL    string   `json:"url"`
	Status string   `json:"status"`
	Token  string   `json:"token"`
	Error  *Problem `json:"error"`
}

// Problem is an RFC 7807 problem document as ACME uses it (RFC 8555 §6.7).
type Problem struct {
	Type   string `json:"type"`
	Detail string `json:"detail"`
	Status int    `json:"status"`
}

func (p *Problem) Error() string {
	return fmt.Sprintf("loadtest: server problem %s: %s", p.Type, p.Detail)
}

// clientError is a failure that carried no problem document; kind becomes
// the "client:<kind>" label in the report.
type clientError struct {
	kind string
	err  error
}

func (e *clientError) Error() string { return fmt.Sprintf("loadtest: %s: %v", e.kind, e.err) }
func (e *clientError) Unwrap() error { return e.err }

func clientErr(kind string, format string, args ...any) error {
	return &clientError{kind: kind, err: fmt.Errorf(format, args...)}
}

// errorLabel is the key under which err is counted in Report.Errors.
func errorLabel(err error) string {
	var p *Problem
	if errors.As(err, &p) {
		if p.Type == "" {
			return "about:blank"
		}
		return p.Type
	}
	var c *clientError
	if errors.As(err, &c) {
		return "client:" + c.kind
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return "client:canceled"
	}
	return "client:other"
}

const problemBadNonce = "urn:ietf:params:acme:error:badNonce"

// response is what the client keeps of an HTTP response.
type response struct {
	status     int
	location   string
	retryAfter time.Duration // 0 when absent
	body       []byte
}

// parseResponse turns an HTTP status, headers and body into a response or,
// for status >= 400, a *Problem (or a clientError when the body is not a
// problem document). now is used for HTTP-date Retry-After values.
func parseResponse(status int, h http.Header, body []byte, now time.Time) (*response, error) {
	r := &response{status: status, location: h.Get("Location"), body: body}
	r.retryAfter = parseRetryAfter(h.Get("Retry-After"), now)
	if status < 400 {
		return r, nil
	}
	ct, _, _ := mime.ParseMediaType(h.Get("Content-Type"))
	var p Problem
	if (ct == "application/problem+json" || ct == "application/json") && json.Unmarshal(body, &p) == nil && p.Type != "" {
		if p.Status == 0 {
			p.Status = status
		}
		return r, &p
	}
	return r, clientErr("http-"+strconv.Itoa(status), "HTTP %d without a problem document", status)
}

// parseRetryAfter reads a Retry-After header (RFC 9110 §10.2.3): delay
// seconds or an HTTP date. It returns 0 for an absent or unreadable value
// and caps the result at one minute.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if n, err := strconv.ParseUint(v, 10, 32); err == nil {
		d = time.Duration(n) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), time.Minute)
}

// acmeClient is one ACME account. It is used by one goroutine at a time.
type acmeClient struct {
	hc    *http.Client
	dir   directory
	key   *ecdsa.PrivateKey // account key
	kid   string
	thumb string // base64url JWK thumbprint (RFC 7638)
	nonce string
	stats *counters
	poll  time.Duration
}

// counters are shared by every client of a run.
type counters struct {
	requests    atomic.Int64 // HTTP requests sent
	retryWaits  atomic.Int64 // waits imposed by a Retry-After header
	retryWaitNs atomic.Int64 // their total length

	mu      sync.Mutex
	retries map[string]int // problem type → requests repeated after Retry-After
}

func (c *counters) retried(typ string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.retries == nil {
		c.retries = make(map[string]int)
	}
	c.retries[typ]++
}

func newACMEClient(hc *http.Client, dir directory, poll time.Duration, stats *counters) (*acmeClient, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("loadtest: account key: %w", err)
	}
	jwk := jose.JSONWebKey{Key: &k.PublicKey}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("loadtest: thumbprint: %w", err)
	}
	return &acmeClient{hc: hc, dir: dir, key: k, thumb: base64.RawURLEncoding.EncodeToString(tp), poll: poll, stats: stats}, nil
}

// fetchDirectory reads the directory at url (RFC 8555 §7.1.1).
func fetchDirectory(ctx context.Context, hc *http.Client, url string) (directory, error) {
	var d directory
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return d, fmt.Errorf("loadtest: directory: %w", err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return d, &clientError{kind: "transport", err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return d, &clientError{kind: "transport", err: err}
	}
	if _, err := parseResponse(resp.StatusCode, resp.Header, body, time.Now()); err != nil {
		return d, err
	}
	if err := json.Unmarshal(body, &d); err != nil {
		return d, clientErr("malformed", "directory: %v", err)
	}
	if d.NewNonce == "" || d.NewAccount == "" || d.NewOrder == "" {
		return d, clientErr("malformed", "directory lacks newNonce, newAccount or newOrder")
	}
	return d, nil
}

func (c *acmeClient) fetchNonce(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, c.dir.NewNonce, nil)
	if err != nil {
		return fmt.Errorf("loadtest: newNonce: %w", err)
	}
	c.stats.requests.Add(1)
	resp, err := c.hc.Do(req)
	if err != nil {
		return &clientError{kind: "transport", err: err}
	}
	resp.Body.Close()
	c.nonce = resp.Header.Get("Replay-Nonce")
	if c.nonce == "" {
		return clientErr("malformed", "newNonce: no Replay-Nonce (HTTP %d)", resp.StatusCode)
	}
	return nil
}

// sign builds the flattened JWS of RFC 8555 §6.2 for url. A nil payload
// is a POST-as-GET (empty payload, §6.3).
func (c *acmeClient) sign(url string, payload []byte) ([]byte, error) {
	opts := &jose.SignerOptions{ExtraHeaders: map[jose.HeaderKey]any{
		"url":   url,
		"nonce": c.nonce,
	}}
	if c.kid == "" {
		opts.EmbedJWK = true
	} else {
		opts.ExtraHeaders["kid"] = c.kid
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: c.key}, opts)
	if err != nil {
		return nil, fmt.Errorf("loadtest: signer: %w", err)
	}
	obj, err := signer.Sign(payload)
	if err != nil {
		return nil, fmt.Errorf("loadtest: sign: %w", err)
	}
	compact, err := obj.CompactSerialize()
	if err != nil {
		return nil, fmt.Errorf("loadtest: serialize: %w", err)
	}
	parts := strings.Split(compact, ".")
	if len(parts) != 3 {
		return nil, errors.New("loadtest: serialize: unexpected JWS shape")
	}
	return json.Marshal(map[string]string{"protected": parts[0], "payload": parts[1], "signature": parts[2]})
}

// post sends a signed request, retrying once on badNonce (RFC 8555 §6.5).
func (c *acmeClient) post(ctx context.Context, url string, payload []byte, accept string) (*response, error) {
	nonceRetried, throttled := false, 0
	for range maxAttempts {
		if c.nonce == "" {
			if err := c.fetchNonce(ctx); err != nil {
				return nil, err
			}
		}
		body, err := c.sign(url, payload)
		if err != nil {
			return nil, err
		}
		c.nonce = ""
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return nil, fmt.Errorf("loadtest: request: %w", err)
		}
		req.Header.Set("Content-Type", "application/jose+json")
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		c.stats.requests.Add(1)
		resp, err := c.hc.Do(req)
		if err != nil {
			return nil, &clientError{kind: "transport", err: err}
		}
		rb, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
		resp.Body.Close()
		if err != nil {
			return nil, &clientError{kind: "transport", err: err}
		}
		c.nonce = resp.Header.Get("Replay-Nonce")
		r, err := parseResponse(resp.StatusCode, resp.Header, rb, time.Now())
		var p *Problem
		if !errors.As(err, &p) {
			return r, err
		}
		if p.Type == problemBadNonce && !nonceRetried {
			nonceRetried = true
			continue
		}
		// 429 and 503 with Retry-After say when the same request may
		// succeed (RFC 8555 §6.6); a polite client waits and repeats it.
		if (r.status == http.StatusTooManyRequests || r.status == http.StatusServiceUnavailable) &&
			r.retryAfter > 0 && throttled < maxThrottleRetries {
			throttled++
			c.stats.retried(p.Type)
			if werr := c.wait(ctx, r); werr != nil {
				return r, err
			}
			continue
		}
		return r, err
	}
	return nil, clientErr("request-limit", "%s: no answer after %d attempts", url, maxAttempts)
}

// Retry bounds for one request.
const (
	maxThrottleRetries = 30 // 429/503 answers with Retry-After
	maxAttempts        = maxThrottleRetries + 2
)

func (c *acmeClient) postJSON(ctx context.Context, url string, payload []byte, out any) (*response, error) {
	r, err := c.post(ctx, url, payload, "")
	if err != nil {
		return r, err
	}
	if out != nil {
		if err := json.Unmarshal(r.body, out); err != nil {
			return r, clientErr("malformed", "%s: %v", url, err)
		}
	}
	return r, nil
}

// register creates the account (RFC 8555 §7.3).
func (c *acmeClient) register(ctx context.Context) error {
	r, err := c.postJSON(ctx, c.dir.NewAccount, []byte(`{"termsOfServiceAgreed":true}`), nil)
	if err != nil {
		return err
	}
	if r.location == "" {
		return clientErr("malformed", "newAccount: no Location")
	}
	c.kid = r.location
	return nil
}

// wait sleeps for the server's Retry-After, else for the poll interval.
func (c *acmeClient) wait(ctx context.Context, r *response) error {
	d := c.poll
	if r != nil && r.retryAfter > 0 {
		d = r.retryAfter
		c.stats.retryWaits.Add(1)
		c.stats.retryWaitNs.Add(int64(d))
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// maxPolls bounds every polling loop in count; the context bounds it in time.
const maxPolls = 100000

// issue runs one order for names from newOrder to the downloaded
// certificate (RFC 8555 §7.4) and returns the certificate chain in PEM.
func (c *acmeClient) issue(ctx context.Context, s *solver, chal string, names []string, certKey crypto.Signer) ([]byte, error) {
	type ident struct {
		Type  string `json:"type"`
		Value string `json:"value"`
	}
	ids := make([]ident, len(names))
	for i, n := range names {
		ids[i] = ident{"dns", n}
	}
	payload, _ := json.Marshal(map[string]any{"identifiers": ids})
	var o order
	r, err := c.postJSON(ctx, c.dir.NewOrder, payload, &o)
	if err != nil {
		return nil, err
	}
	orderURL := r.location
	if orderURL == "" {
		return nil, clientErr("malformed", "newOrder: no Location")
	}

	for _, az := range o.Authorizations {
		cleanup, err := c.authorize(ctx, s, chal, az)
		if cleanup != nil {
			defer cleanup()
		}
		if err != nil {
			return nil, err
		}
	}

	// Wait for ready: the authorizations are valid once we get here, but
	// the order's status may lag.
	o = order{}
	if r, err = c.postJSON(ctx, orderURL, nil, &o); err != nil {
		return nil, err
	}
	if o, r, err = c.pollOrder(ctx, orderURL, o, r, "pending"); err != nil {
		return nil, err
	}
	if o.Status != "ready" {
		return nil, orderFailure(&o, "not ready after validation")
	}

	csr, err := makeCSR(names, certKey)
	if err != nil {
		return nil, err
	}
	fin, _ := json.Marshal(map[string]string{"csr": base64.RawURLEncoding.EncodeToString(csr)})
	r, err = c.postJSON(ctx, o.Finalize, fin, &o)
	if err != nil {
		return nil, err
	}
	if o, _, err = c.pollOrder(ctx, orderURL, o, r, "processing", "ready"); err != nil {
		return nil, err
	}
	if o.Status != "valid" || o.Certificate == "" {
		return nil, orderFailure(&o, "not valid after finalize")
	}
	cr, err := c.post(ctx, o.Certificate, nil, "application/pem-certificate-chain")
	if err != nil {
		return nil, err
	}
	if err := checkChain(cr.body, names); err != nil {
		return nil, err
	}
	return cr.body, nil
}

func orderFailure(o *order, what string) error {
	if o.Error != nil {
		return o.Error
	}
	return clientErr("order-"+o.Status, "order %s (status %q)", what, o.Status)
}

// pollOrder fetches the order while its status is one of waitWhile.
func (c *acmeClient) pollOrder(ctx context.Context, url string, o order, r *response, waitWhile ...string) (order, *response, error) {
	for range maxPolls {
		if !slices.Contains(waitWhile, o.Status) {
			return o, r, nil
		}
		if err := c.wait(ctx, r); err != nil {
			return o, r, err
		}
		var err error
		o = order{}
		if r, err = c.postJSON(ctx, url, nil, &o); err != nil {
			return o, r, err
		}
	}
	return o, r, clientErr("poll-limit", "order still %s after %d polls", o.Status, maxPolls)
}

// authorize solves one authorization (RFC 8555 §7.5) and returns the
// cleanup of the presented challenge.
func (c *acmeClient) authorize(ctx context.Context, s *solver, chal, url string) (func(), error) {
	var az authorization
	r, err := c.postJSON(ctx, url, nil, &az)
	if err != nil {
		return nil, err
	}
	if az.Status == "valid" {
		return nil, nil
	}
	if az.Status != "pending" {
		return nil, clientErr("authz-"+az.Status, "authorization %s is %q", az.Identifier.Value, az.Status)
	}
	var ch *challenge
	for i := range az.Challenges {
		if az.Challenges[i].Type == chal {
			ch = &az.Challenges[i]
		}
	}
	if ch == nil {
		return nil, clientErr("no-challenge", "authorization for %s offers no %s challenge", az.Identifier.Value, chal)
	}
	cleanup, err := s.present(chal, az.Identifier.Value, ch.Token, ch.Token+"."+c.thumb)
	if err != nil {
		return nil, err
	}
	if r, err = c.postJSON(ctx, ch.URL, []byte("{}"), nil); err != nil {
		return cleanup, err
	}
	for range maxPolls {
		if err := c.wait(ctx, r); err != nil {
			return cleanup, err
		}
		az = authorization{}
		if r, err = c.postJSON(ctx, url, nil, &az); err != nil {
			return cleanup, err
		}
		switch az.Status {
		case "pending":
			continue
		case "valid":
			return cleanup, nil
		default:
			for _, x := range az.Challenges {
				if x.Error != nil {
					return cleanup, x.Error
				}
			}
			return cleanup, clientErr("authz-"+az.Status, "authorization for %s is %q", az.Identifier.Value, az.Status)
		}
	}
	return cleanup, clientErr("poll-limit", "authorization still pending after %d polls", maxPolls)
}

// makeCSR builds a PKCS#10 request for names (RFC 8555 §7.4).
func makeCSR(names []string, key crypto.Signer) ([]byte, error) {
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: names[0]}, DNSNames: names}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("loadtest: CSR: %w", err)
	}
	return der, nil
}

// checkChain checks that the downloaded PEM chain starts with a
// certificate for exactly names.
func checkChain(pemChain []byte, names []string) error {
	b, _ := pem.Decode(pemChain)
	if b == nil || b.Type != "CERTIFICATE" {
		return clientErr("bad-certificate", "download is not a PEM certificate chain")
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return clientErr("bad-certificate", "%v", err)
	}
	got := slices.Clone(cert.DNSNames)
	want := slices.Clone(names)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		return clientErr("bad-certificate", "certificate names %v, ordered %v", got, want)
	}
	return nil
}

// newCertKey generates the key a client puts in its CSRs.
func newCertKey(keyType string) (crypto.Signer, error) {
	switch keyType {
	case "ecdsa-p256", "":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "rsa-2048":
		return rsa.GenerateKey(rand.Reader, 2048)
	}
	return nil, fmt.Errorf("loadtest: unknown key type %q (want ecdsa-p256 or rsa-2048)", keyType)
}
