package acme

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Server is an ACME server. Create it with New, serve Handler, and Close it
// after the HTTP server has stopped.
type Server struct {
	cfg   Config
	ca    CA
	st    Store
	opts  Options
	now   func() time.Time
	log   *slog.Logger
	nonce *nonceSource
	keys  keyCache
	accts accountCache
	p256  p256Tables
	limit *limiter

	dirJSON []byte
	mux     *http.ServeMux

	locks      [256]sync.Mutex
	certLocks  [64]sync.Mutex
	finalizing sync.Map // order IDs being finalized in this process
	validating sync.Map // authz IDs whose first attempt runs inline
	lockSeed   maphash.Seed

	val *validator

	ctx     context.Context
	cancel  context.CancelFunc
	bg      sync.WaitGroup
	issueCh chan struct{} // semaphore for concurrent issuance
}

// New validates cfg, loads the server state from st (nonce key and window),
// re-queues validations that were pending and fails orders a restart
// interrupted while processing, and starts the validation workers.
func New(cfg Config, ca CA, st Store, opts Options) (*Server, error) {
	if ca == nil || st == nil {
		return nil, errors.New("acme: New needs a CA and a Store")
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if opts.Resolver != "" {
		if _, _, err := net.SplitHostPort(opts.Resolver); err != nil {
			return nil, fmt.Errorf("acme: resolver %q: want HOST:PORT", opts.Resolver)
		}
		cfg.Resolver = opts.Resolver
	}
	s := &Server{cfg: cfg, ca: ca, st: st, opts: opts, now: opts.Clock, log: opts.Logger, lockSeed: maphash.MakeSeed()}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.issueCh = make(chan struct{}, cfg.IssueWorkers)
	s.limit = newLimiter(s.now)
	var err error
	if s.nonce, err = newNonceSource(s.ctx, st); err != nil {
		return nil, err
	}
	s.buildDirectory()
	s.routes()
	s.val = newValidator(s)
	if err := s.recover(s.ctx); err != nil {
		s.Close()
		return nil, err
	}
	if _, ok := st.(Pruner); ok && cfg.Retention >= 0 {
		s.bg.Add(1)
		go s.pruneLoop()
	}
	return s, nil
}

// Close stops the validation and issuance workers and the pruner, and
// saves the nonce window. Call it after the HTTP server has shut down.
func (s *Server) Close() error {
	s.cancel()
	s.val.stop()
	s.bg.Wait()
	return s.nonce.close(context.Background())
}

// Handler serves the ACME API under Config.Prefix.
func (s *Server) Handler() http.Handler { return s.mux }

// Directory URL paths (relative to BaseURL).
const (
	pDirectory = "directory"
	pNewNonce  = "new-nonce"
	pNewAcct   = "new-account"
	pNewOrder  = "new-order"
	pRevoke    = "revoke-cert"
	pKeyChange = "key-change"
	pAcct      = "acct/"
	pOrder     = "order/"
	pAuthz     = "authz/"
	pChall     = "chall/"
	pCert      = "cert/"
	pRenewal   = "renewal-info"
)

func (s *Server) url(p string) string { return s.cfg.BaseURL + p }

func (s *Server) buildDirectory() {
	meta := map[string]any{}
	if s.cfg.TermsOfService != "" {
		meta["termsOfService"] = s.cfg.TermsOfService
	}
	if s.cfg.Website != "" {
		meta["website"] = s.cfg.Website
	}
	if len(s.cfg.CAAIdentities) > 0 {
		meta["caaIdentities"] = s.cfg.CAAIdentities
	}
	meta["externalAccountRequired"] = s.cfg.ExternalAccountRequired
	if len(s.cfg.Profiles) > 0 {
		meta["profiles"] = s.cfg.Profiles
	}
	d := map[string]any{
		"newNonce":    s.url(pNewNonce),
		"newAccount":  s.url(pNewAcct),
		"newOrder":    s.url(pNewOrder),
		"revokeCert":  s.url(pRevoke),
		"keyChange":   s.url(pKeyChange),
		"renewalInfo": s.url(pRenewal),
		"meta":        meta,
	}
	s.dirJSON, _ = json.MarshalIndent(d, "", "  ")
}

func (s *Server) routes() {
	m := http.NewServeMux()
	p := s.cfg.Prefix
	m.HandleFunc("GET "+p+pDirectory, s.handleDirectory)
	m.HandleFunc("GET "+p+pNewNonce, s.handleNewNonce)
	m.HandleFunc("HEAD "+p+pNewNonce, s.handleNewNonce)
	m.HandleFunc("GET "+p+pRenewal+"/{id}", s.handleRenewalInfo)
	m.HandleFunc("GET "+p+pCert+"{serial}/issuer", s.handleIssuer)
	post := func(path string, h postHandler) {
		m.HandleFunc("POST "+p+path, s.post(h))
	}
	post(pNewAcct, s.handleNewAccount)
	post(pAcct+"{id}", s.handleAccount)
	post(pAcct+"{id}/orders", s.handleOrders)
	post(pKeyChange, s.handleKeyChange)
	post(pNewOrder, s.handleNewOrder)
	post(pOrder+"{id}", s.handleOrder)
	post(pOrder+"{id}/finalize", s.handleFinalize)
	post(pAuthz+"{id}", s.handleAuthz)
	post(pChall+"{id}/{type}", s.handleChallenge)
	post(pCert+"{serial}", s.handleCert)
	post(pRevoke, s.handleRevoke)
	m.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
		s.writeProblem(w, notFound())
	})
	s.mux = m
}

func (s *Server) handleDirectory(w http.ResponseWriter, r *http.Request) {
	if ok, wait := s.limit.allow("ip:"+s.clientIP(r), s.cfg.RateLimits.IPRate, s.cfg.RateLimits.IPBurst); !ok {
		s.writeProblem(w, rateLimited("too many requests from your address", wait))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(s.dirJSON)
}

func (s *Server) handleNewNonce(w http.ResponseWriter, r *http.Request) {
	if ok, wait := s.limit.allow("ip:"+s.clientIP(r), s.cfg.RateLimits.IPRate, s.cfg.RateLimits.IPBurst); !ok {
		s.writeProblem(w, rateLimited("too many requests from your address", wait))
		return
	}
	if !s.setNonce(w) {
		s.writeProblem(w, internal())
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Link", `<`+s.url(pDirectory)+`>;rel="index"`)
	if r.Method == http.MethodGet {
		w.WriteHeader(http.StatusNoContent)
	}
}

func (s *Server) setNonce(w http.ResponseWriter) bool {
	n, err := s.nonce.Nonce()
	if err != nil {
		s.log.Error("acme: nonce", "err", err)
		return false
	}
	w.Header()["Replay-Nonce"] = []string{n}
	return true
}

func (s *Server) clientIP(r *http.Request) string {
	if s.opts.ClientIP != nil {
		return s.opts.ClientIP(r)
	}
	h, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return h
}

// rateLimited is the 429 answer; Retry-After is wait (the limiter's time
// until a token is available) rounded up to whole seconds. It goes out
// without a Replay-Nonce: minting nonces for requests that are turned
// away would let one client flood the nonce window (see nonce.go) and
// make every other client's nonces stale.
func rateLimited(detail string, wait time.Duration) *Problem {
	p := prob(ProbRateLimited, http.StatusTooManyRequests, detail)
	p.retryAfter = max(wait, time.Second)
	return p
}

// request is an authenticated ACME POST.
type request struct {
	r       *http.Request
	jws     *parsedJWS
	acct    *Account         // set when signed with kid
	key     *jose.JSONWebKey // acct's key, parsed
	payload []byte
	url     string
}

func (q *request) postAsGet() bool { return len(q.payload) == 0 }

// postHandler handles an authenticated POST and writes the answer.
type postHandler func(w http.ResponseWriter, q *request) *Problem

// needsJWK lists the endpoints where a jwk header is allowed.
func (s *Server) jwkAllowed(path string) (allowed, required bool) {
	switch path {
	case s.cfg.Prefix + pNewAcct:
		return true, true
	case s.cfg.Prefix + pRevoke:
		return true, false
	}
	return false, false
}

// post wraps a handler with the JWS checks of RFC 8555 §6.2-6.5.
func (s *Server) post(h postHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if p := s.authenticate(w, r, h); p != nil {
			// Every problem answer carries a fresh nonce (RFC 8555 §6.5
			// requires one with badNonce), except rateLimited, for the
			// reason rateLimited gives.
			if p.Type == ProbBadNonce || (p.Type != ProbRateLimited && w.Header().Get("Replay-Nonce") == "") {
				s.setNonce(w)
			}
			if p.Status == 500 && p.Type == ProbServerInternal {
				s.log.Debug("acme: internal error answered", "path", r.URL.Path)
			}
			s.writeProblem(w, p)
		}
	}
}

func (s *Server) authenticate(w http.ResponseWriter, r *http.Request, h postHandler) *Problem {
	ip := s.clientIP(r)
	rl := &s.cfg.RateLimits
	if ok, wait := s.limit.allow("ip:"+ip, rl.IPRate, rl.IPBurst); !ok {
		return rateLimited("too many requests from your address", wait)
	}
	ct := r.Header.Get("Content-Type")
	if ct != "application/jose+json" {
		if mt, _, _ := strings.Cut(ct, ";"); strings.TrimSpace(mt) != "application/jose+json" {
			return prob(ProbMalformed, 415, "Content-Type must be application/jose+json")
		}
	}
	if r.ContentLength > s.cfg.MaxBodyBytes {
		return prob(ProbMalformed, 413, "request body too large")
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, s.cfg.MaxBodyBytes+1))
	if err != nil {
		return malformed("cannot read request body")
	}
	if int64(len(body)) > s.cfg.MaxBodyBytes {
		return prob(ProbMalformed, 413, "request body too large")
	}
	jws, p := parseJWS(body)
	if p != nil {
		return p
	}
	if !s.nonce.Use(jws.hdr.Nonce) {
		return prob(ProbBadNonce, 400, "JWS has an invalid or used anti-replay nonce")
	}
	q := &request{r: r, jws: jws, payload: jws.payload, url: s.cfg.BaseURL + strings.TrimPrefix(r.URL.Path, s.cfg.Prefix)}
	if r.URL.RawQuery != "" {
		q.url += "?" + r.URL.RawQuery
	}
	if jws.hdr.URL != q.url {
		return unauthorized("JWS url " + quoteShort(jws.hdr.URL) + " does not match the request URL")
	}
	allowed, required := s.jwkAllowed(r.URL.Path)
	if jws.jwk != nil {
		if !allowed {
			return malformed("this request must be signed with the account's kid, not a jwk")
		}
		if !jws.verify(jws.jwk) {
			return malformed("JWS signature does not verify")
		}
	} else {
		if required {
			return malformed("newAccount must be signed with a jwk, not a kid")
		}
		id, ok := strings.CutPrefix(jws.hdr.Kid, s.url(pAcct))
		if !ok || id == "" || strings.Contains(id, "/") {
			return prob(ProbAccountDoesNotExist, 400, "kid is not an account URL of this server")
		}
		acct, key, err := s.accts.get(r.Context(), s.st, &s.keys, id)
		if errors.Is(err, ErrNotFound) {
			return prob(ProbAccountDoesNotExist, 400, "no such account")
		} else if err != nil {
			s.log.Error("acme: get account", "account", id, "err", err)
			return internal()
		}
		if !jws.verifyAccount(key, &s.p256) {
			// Signed by someone else than the account it names.
			return unauthorized("JWS signature does not verify with the account key")
		}
		if acct.Status != StatusValid {
			return inactiveAccount(acct)
		}
		if ok, wait := s.limit.allow("a:"+acct.ID, rl.AccountRate, rl.AccountBurst); !ok {
			return rateLimited("too many requests for this account", wait)
		}
		q.acct, q.key = acct, key
	}
	if !s.setNonce(w) {
		return internal()
	}
	w.Header().Set("Link", `<`+s.url(pDirectory)+`>;rel="index"`)
	return h(w, q)
}

// writeJSON writes v with the status code; location, if set, goes into the
// Location header.
func (s *Server) writeJSON(w http.ResponseWriter, status int, location string, v any) *Problem {
	b, err := jsonMarshal(v)
	if err != nil {
		s.log.Error("acme: encode response", "err", err)
		return internal()
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if location != "" {
		h.Set("Location", location)
	}
	w.WriteHeader(status)
	w.Write(b)
	return nil
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

// decodePayload decodes a JSON payload strictly enough: unknown fields are
// allowed (RFC 8555 §7.3 lets clients send fields the server ignores).
func decodePayload(b []byte, v any) *Problem {
	if err := json.Unmarshal(b, v); err != nil {
		return malformed("request payload is not the expected JSON object")
	}
	return nil
}

func newID() string {
	var b [16]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// lock serialises read-modify-write of one object (account, order or
// authz) within this process. The locks are striped: two objects may share
// one, so a goroutine holds at most one of them at a time.
func (s *Server) lock(id string) func() {
	m := &s.locks[maphash.String(s.lockSeed, id)%uint64(len(s.locks))]
	m.Lock()
	return m.Unlock
}

// lockCert serialises read-modify-write of one certificate record (revoke,
// marking it replaced). Its stripes are not lock's: finalize marks the
// certificate an order replaces while it holds the order's lock, which on
// a shared stripe would be that same mutex about once in 256 renewals (a
// goroutine waiting for itself) or, with two finalizes crossing, a lock
// cycle. The order is always object lock, then certificate lock; nothing
// takes an object lock while holding a certificate lock.
func (s *Server) lockCert(serial string) func() {
	m := &s.certLocks[maphash.String(s.lockSeed, serial)%uint64(len(s.certLocks))]
	m.Lock()
	return m.Unlock
}

func retryAfter(w http.ResponseWriter, d time.Duration) {
	sec := int((d + time.Second - 1) / time.Second)
	if sec < 1 {
		sec = 1
	}
	w.Header().Set("Retry-After", strconv.Itoa(sec))
}

func (s *Server) internalErr(what string, err error) *Problem {
	if errors.Is(err, ErrNotFound) {
		return notFound()
	}
	s.log.Error("acme: "+what, "err", err)
	return internal()
}
