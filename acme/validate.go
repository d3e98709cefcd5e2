package acme

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// validator runs challenge validations. At most ValidationWorkers
// attempts run at a time, whoever starts them: the pool's workers and the
// first attempts that challenge POSTs run inline share one set of slots.
// Each job is one attempt; a failed attempt is retried after
// ValidationRetryDelay up to ValidationRetries times, each attempt bounded by
// ValidationTimeout. The work record in the store makes a restart re-queue
// the validations that were in flight, and the challenge's stored count of
// attempts made (Challenge.Attempts, written with each failure) makes it
// resume with the attempts left rather than start over.
type validator struct {
	s        *Server
	ch       chan valJob
	slots    chan struct{} // one token per attempt running
	wg       sync.WaitGroup
	dialer   *net.Dialer
	resolver sysResolver // the system resolver, when dns is nil
	dns      *dnsClient  // Config.Resolver's client, when one is set
	client   *http.Client
}

// sysResolver is what the validator asks of the system resolver
// (*net.Resolver); tests substitute it.
type sysResolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
	LookupTXT(ctx context.Context, name string) ([]string, error)
}

// absName is name made absolute (a trailing dot), as every name the
// validator gives the system resolver must be: a relative name is also
// tried with each domain of the search list of /etc/resolv.conf appended
// (and first so when it has fewer dots than ndots, which with ndots:5 is
// almost every name), so whoever controls a search domain could pass
// validations for names that are not theirs.
func absName(name string) string {
	if strings.HasSuffix(name, ".") {
		return name
	}
	return name + "."
}

type valJob struct {
	authz, typ string
	attempt    int
	// ran is set once the attempt has run and only storing its outcome,
	// res, failed: the job then retries the write, not the attempt.
	ran bool
	res *Problem
	// storeFails counts the store errors this job has met.
	storeFails int
}

// Store retries. When a queued validation or a background issuance meets a
// store error, the step is tried again after storeRetryDelay, doubling, at
// most storeRetries times (3.1 s in all); then the challenge or order is
// settled invalid (serverInternal, or the CA's problem), and only if even
// that cannot be written is it left to the restart recovery (recover.go).
const (
	storeRetries    = 5
	storeRetryDelay = 100 * time.Millisecond
)

func storeBackoff(n int) time.Duration { return storeRetryDelay << n }

func newValidator(s *Server) *validator {
	v := &validator{s: s, ch: make(chan valJob, 1024), slots: make(chan struct{}, s.cfg.ValidationWorkers), dialer: s.opts.Dialer}
	if v.dialer == nil {
		v.dialer = &net.Dialer{}
	}
	v.resolver = net.DefaultResolver
	if s.cfg.Resolver != "" {
		v.dns = newDNSClient(s.cfg.Resolver, v.dialer)
	}
	v.client = s.opts.HTTPClient
	if v.client == nil {
		v.client = &http.Client{
			Transport: &http.Transport{
				DialContext:        v.dialResolved,
				DisableKeepAlives:  true,
				DisableCompression: true,
				Proxy:              nil,
				// A redirect to https is followed without checking the
				// certificate, as RFC 8555 §8.3 lets validators do.
				TLSClientConfig:       &tls.Config{InsecureSkipVerify: true},
				ResponseHeaderTimeout: s.cfg.ValidationTimeout,
			},
			CheckRedirect: v.checkRedirect,
		}
	}
	for i := 0; i < s.cfg.ValidationWorkers; i++ {
		v.wg.Add(1)
		go v.work()
	}
	return v
}

func (v *validator) stop() { v.wg.Wait() }

// tryAcquire takes an attempt slot if one is free; release gives it back.
func (v *validator) tryAcquire() bool {
	select {
	case v.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

func (v *validator) release() { <-v.slots }

// enqueue schedules an attempt without blocking the caller: the first at
// once, later ones after ValidationRetryDelay.
func (v *validator) enqueue(authz, typ string, attempt int) {
	var delay time.Duration
	if attempt > 0 {
		delay = v.s.cfg.ValidationRetryDelay
	}
	v.schedule(valJob{authz: authz, typ: typ, attempt: attempt}, delay)
}

// schedule queues j after delay without blocking the caller. A job still
// waiting when the server closes is dropped: its work record re-queues it
// on start.
func (v *validator) schedule(j valJob, delay time.Duration) {
	if delay <= 0 {
		select {
		case v.ch <- j:
			return
		default:
		}
	}
	v.s.bg.Add(1)
	go func() {
		defer v.s.bg.Done()
		if delay > 0 {
			t := time.NewTimer(delay)
			defer t.Stop()
			select {
			case <-t.C:
			case <-v.s.ctx.Done():
				return
			}
		}
		select {
		case v.ch <- j:
		case <-v.s.ctx.Done():
		}
	}()
}

func (v *validator) work() {
	defer v.wg.Done()
	for {
		select {
		case <-v.s.ctx.Done():
			return
		case j := <-v.ch:
			v.run(j)
		}
	}
}

func (v *validator) run(j valJob) {
	s := v.s
	ctx := s.ctx
	if !j.ran {
		a, err := s.st.GetAuthz(ctx, j.authz)
		if errors.Is(err, ErrNotFound) {
			return // pruned
		} else if err != nil {
			v.storeFailed(j, "get authz", err)
			return
		}
		c := findChallenge(a, j.typ)
		if c == nil || c.Status != StatusProcessing {
			return
		}
		// The stored count of attempts made is the one that holds: a
		// restart re-queues the job without it (recover.go), and a
		// budget used up before the restart (or cut by a lower
		// ValidationRetries) settles with the last attempt's problem.
		j.attempt = c.Attempts
		if j.attempt > s.cfg.ValidationRetries {
			p := c.Error
			if p == nil {
				p = prob(ProbServerInternal, 500, "the validation attempts are used up; create a new order")
			}
			j.ran, j.res = true, p
		} else {
			select {
			case v.slots <- struct{}{}:
			case <-ctx.Done():
				return
			}
			p, err := v.attempt(ctx, a, j.typ, "", s.cfg.ValidationTimeout)
			v.release()
			if ctx.Err() != nil {
				return // shutting down; the work record re-queues it on start
			}
			if err != nil {
				v.storeFailed(j, "get account", err)
				return
			}
			j.ran, j.res = true, p
		}
	}
	if j.res != nil && j.attempt < s.cfg.ValidationRetries {
		s.log.Debug("acme: validation attempt failed", "authz", j.authz, "type", j.typ, "attempt", j.attempt, "problem", j.res.Detail)
		more, err := v.recordFailure(j.authz, j.typ, j.attempt+1, j.res)
		if err != nil {
			if ctx.Err() == nil {
				v.storeFailed(j, "store the failed attempt", err)
			}
			return
		}
		if more {
			v.enqueue(j.authz, j.typ, j.attempt+1)
		}
		return
	}
	if _, err := v.settle(j.authz, j.typ, j.res, StatusProcessing); err != nil && ctx.Err() == nil {
		v.storeFailed(j, "store the outcome", err)
	}
}

// recordFailure stores that n attempts of a processing challenge have been
// made, the last failing with p (the challenge's error, RFC 8555 §8.2),
// before the next attempt is queued, so that a restart resumes the count
// rather than grant a fresh set of attempts. It reports false if there is
// nothing more to do: the challenge is no longer processing or the
// authorization was pruned. An error is a store error: nothing was stored.
func (v *validator) recordFailure(authzID, typ string, n int, p *Problem) (bool, error) {
	s := v.s
	unlock := s.lock(authzID)
	defer unlock()
	a, err := s.st.GetAuthz(s.ctx, authzID)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	c := findChallenge(a, typ)
	if c == nil || c.Status != StatusProcessing {
		return false, nil
	}
	id := a.Identifier
	p.Identifier = &id
	c.Attempts, c.Error = n, p
	if err := s.st.UpdateAuthz(s.ctx, a, "", false); errors.Is(err, ErrNotFound) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	return true, nil
}

// storeFailed handles a store error met by job j: the job runs again after
// a backoff, at most storeRetries times; then the challenge is settled
// invalid with serverInternal rather than left processing until a restart.
func (v *validator) storeFailed(j valJob, what string, err error) {
	s := v.s
	if j.storeFails < storeRetries {
		s.log.Warn("acme: validation: "+what+"; retrying", "authz", j.authz, "type", j.typ, "err", err)
		d := storeBackoff(j.storeFails)
		j.storeFails++
		v.schedule(j, d)
		return
	}
	s.log.Error("acme: validation: "+what+"; giving up", "authz", j.authz, "type", j.typ, "err", err)
	p := prob(ProbServerInternal, 500, "the server could not complete the validation; create a new order")
	if _, err := v.settle(j.authz, j.typ, p, StatusProcessing); err != nil {
		s.log.Error("acme: validation: the challenge stays processing until a restart", "authz", j.authz, "type", j.typ, "err", err)
	}
}

// attempt runs one validation attempt; it fails only if it could not run
// (the account could not be read). thumb is the account key's thumbprint
// when the caller has just read the account (the inline attempt, in the
// request that the account signed); "" reads it from the store.
func (v *validator) attempt(ctx context.Context, a *Authz, typ, thumb string, timeout time.Duration) (*Problem, error) {
	s := v.s
	if thumb == "" {
		acct, _, err := s.accts.get(ctx, s.st, &s.keys, a.AccountID)
		if err != nil {
			return nil, err
		}
		thumb = acct.KeyThumb
	}
	keyAuth := a.Token + "." + thumb
	vctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch typ {
	case ChallengeHTTP01:
		return v.http01(vctx, a, keyAuth), nil
	case ChallengeDNS01:
		return v.dns01(vctx, a, keyAuth), nil
	case ChallengeTLSALPN01:
		return v.tlsALPN01(vctx, a, keyAuth), nil
	}
	return malformed("unknown challenge type"), nil
}

// settle stores the outcome of a validation if the challenge is still in
// state from (pending for the inline first attempt, processing for queued
// ones), and returns the authorization as stored, or nil if there was
// nothing to store (the challenge moved on, or the authorization was
// pruned). An error is a store error: nothing was stored.
func (v *validator) settle(authzID, typ string, p *Problem, from string) (*Authz, error) {
	s := v.s
	ctx := s.ctx
	unlock := s.lock(authzID)
	defer unlock()
	a, err := s.st.GetAuthz(ctx, authzID)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	c := findChallenge(a, typ)
	if c == nil || c.Status != from || (from == StatusPending && s.authzStatus(a) != StatusPending) {
		return nil, nil
	}
	now := s.now().UTC()
	expired := s.authzStatus(a) == StatusExpired
	if p == nil && expired {
		// A queued attempt that succeeded after the authorization expired
		// proves nothing for it any more: it stays expired rather than
		// becoming valid with a fresh lifetime.
		p = unauthorized("the authorization expired before its validation completed")
	}
	if p == nil {
		// A failed earlier attempt's problem goes: the challenge is valid.
		c.Status, c.Validated, c.Error = StatusValid, now, nil
		if a.Status == StatusPending {
			a.Status = StatusValid
			a.Expires = now.Add(s.cfg.AuthzLifetime)
		}
	} else {
		id := a.Identifier
		p.Identifier = &id
		c.Status, c.Error = StatusInvalid, p
		if a.Status == StatusPending && !expired {
			a.Status = StatusInvalid
		}
	}
	work := ""
	if from == StatusProcessing {
		work = WorkValidate + a.ID + "/" + c.Type
	}
	if err := s.st.UpdateAuthz(ctx, a, work, false); errors.Is(err, ErrNotFound) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	return a, nil
}

func findChallenge(a *Authz, typ string) *Challenge {
	for _, c := range a.Challenges {
		if c.Type == typ {
			return c
		}
	}
	return nil
}

// checkRedirect follows at most 10 redirects (RFC 8555 §8.3), only to
// http on the http-01 port or https on 443 (or the configured tls-alpn-01
// port, which tests use), never to another scheme or port.
func (v *validator) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return prob(ProbConnection, 400, "http-01: too many redirects")
	}
	u := req.URL
	port := u.Port()
	ok := false
	switch u.Scheme {
	case "http":
		if port == "" {
			port = "80"
		}
		ok = port == strconv.Itoa(v.s.cfg.HTTP01Port)
	case "https":
		ok = port == "" || port == "443" || port == strconv.Itoa(v.s.cfg.TLSALPN01Port)
	}
	if !ok {
		return prob(ProbConnection, 400, "http-01: redirect to "+quoteShort(u.Scheme+"://"+u.Host)+" is not followed (only http on the http-01 port and https on 443)")
	}
	// The validator goes only where the CA would issue: a redirect's host
	// must pass the name policy, so that a client cannot point the CA at
	// addresses or names the operator has ruled out (RFC 8555 §10.2).
	id := Identifier{Type: "dns", Value: strings.ToLower(strings.TrimSuffix(u.Hostname(), "."))}
	if a, err := netip.ParseAddr(u.Hostname()); err == nil {
		id = Identifier{Type: "ip", Value: a.Unmap().String()}
	}
	if err := v.s.ca.CheckNames("", []Identifier{id}); err != nil {
		return prob(ProbConnection, 400, "http-01: redirect to "+quoteShort(u.Scheme+"://"+u.Host)+" is not followed: its host is outside the CA's name policy")
	}
	return nil
}

// dialResolved dials addr, resolving a host name with the validation
// resolver rather than the system one.
func (v *validator) dialResolved(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ips, p := v.lookup(ctx, host)
	if p != nil {
		return nil, p
	}
	var last error
	for _, ip := range ips {
		c, err := v.dialer.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
		if err == nil {
			return c, nil
		}
		last = err
	}
	return nil, last
}

// lookup returns the addresses to validate host at: the host itself if it
// is an address, else its A and AAAA records from the configured resolver,
// asked for the absolute name. Every host the validator connects to comes
// through here: the identifier (http-01, tls-alpn-01) and the host of an
// http-01 redirect (dialResolved).
func (v *validator) lookup(ctx context.Context, host string) ([]netip.Addr, *Problem) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, nil
	}
	var ips []netip.Addr
	var err error
	if v.dns != nil {
		ips, err = v.dns.lookupIP(ctx, host)
	} else {
		ips, err = v.resolver.LookupNetIP(ctx, "ip", absName(host))
	}
	if err != nil || len(ips) == 0 {
		return nil, prob(ProbDNS, 400, "no A or AAAA record found for "+host)
	}
	for i := range ips {
		ips[i] = ips[i].Unmap()
	}
	return ips, nil
}

func (v *validator) http01(ctx context.Context, a *Authz, keyAuth string) *Problem {
	host := a.Identifier.Value
	hp := net.JoinHostPort(host, strconv.Itoa(v.s.cfg.HTTP01Port))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+hp+"/.well-known/acme-challenge/"+a.Token, nil)
	if err != nil {
		return malformed("cannot build the validation request")
	}
	if v.s.cfg.HTTP01Port == 80 {
		req.Host = host
		if a.Identifier.Type == "ip" && netip.MustParseAddr(host).Is6() {
			req.Host = "[" + host + "]"
		}
	}
	req.Header.Set("User-Agent", "hsmca-acme-validation")
	resp, err := v.client.Do(req)
	if err != nil {
		var p *Problem
		if errors.As(err, &p) {
			return p
		}
		return prob(ProbConnection, 400, "http-01: cannot fetch the challenge from "+hp)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return prob(ProbUnauthorized, 403, "http-01: "+hp+" answered HTTP "+strconv.Itoa(resp.StatusCode))
	}
	// The body is the key authorization, optionally followed by whitespace
	// (RFC 8555 §8.3), and nothing else: a body longer than the limit is
	// refused rather than judged by its first bytes.
	buf := make([]byte, maxHTTP01Body+1)
	n, _ := readFull(resp.Body, buf)
	if n > maxHTTP01Body {
		return prob(ProbIncorrectResponse, 403, "http-01: the response is longer than "+strconv.Itoa(maxHTTP01Body)+" bytes, not the key authorization")
	}
	if string(trimTrailingSpace(buf[:n])) != keyAuth {
		return prob(ProbIncorrectResponse, 403, "http-01: the response is not the key authorization")
	}
	return nil
}

func (v *validator) dns01(ctx context.Context, a *Authz, keyAuth string) *Problem {
	if a.Identifier.Type != "dns" {
		return malformed("dns-01 only validates DNS names")
	}
	name := "_acme-challenge." + a.Identifier.Value
	var txts []string
	var err error
	if v.dns != nil {
		txts, err = v.dns.lookupTXT(ctx, name)
	} else {
		txts, err = v.resolver.LookupTXT(ctx, absName(name))
	}
	if err != nil {
		return prob(ProbDNS, 400, "dns-01: no TXT record found at "+name)
	}
	sum := sha256.Sum256([]byte(keyAuth))
	want := base64.RawURLEncoding.EncodeToString(sum[:])
	for _, t := range txts {
		if t == want {
			return nil
		}
	}
	return prob(ProbIncorrectResponse, 403, "dns-01: no TXT record at "+name+" matches the key authorization")
}

func readFull(r interface{ Read([]byte) (int, error) }, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := r.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// maxHTTP01Body bounds an http-01 response: a key authorization is a
// token (43 characters here), a dot and a 43-character thumbprint; the
// rest allows for trailing whitespace.
const maxHTTP01Body = 1024

// trimTrailingSpace drops the whitespace RFC 8555 §8.3 lets a server
// ignore at the end of the body (only there).
func trimTrailingSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}
