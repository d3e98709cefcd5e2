package acme

import (
	"context"
	"net/http"
	"time"
)

// Challenge types.
const (
	ChallengeHTTP01    = "http-01"
	ChallengeDNS01     = "dns-01"
	ChallengeTLSALPN01 = "tls-alpn-01"
)

type challengeJSON struct {
	Type      string   `json:"type"`
	URL       string   `json:"url"`
	Status    string   `json:"status"`
	Token     string   `json:"token"`
	Validated string   `json:"validated,omitempty"`
	Error     *Problem `json:"error,omitempty"`
}

type authzJSON struct {
	Identifier Identifier      `json:"identifier"`
	Status     string          `json:"status"`
	Expires    string          `json:"expires,omitempty"`
	Challenges []challengeJSON `json:"challenges"`
	Wildcard   bool            `json:"wildcard,omitempty"`
}

// authzStatus is the authorization's status with expiry applied.
func (s *Server) authzStatus(a *Authz) string {
	if (a.Status == StatusPending || a.Status == StatusValid) && s.now().After(a.Expires) {
		return StatusExpired
	}
	return a.Status
}

func (s *Server) challengeJSON(a *Authz, c *Challenge) challengeJSON {
	return challengeJSON{Type: c.Type, URL: s.url(pChall + a.ID + "/" + c.Type), Status: c.Status,
		Token: a.Token, Validated: rfc3339(c.Validated), Error: c.Error}
}

func (s *Server) authzJSON(a *Authz) authzJSON {
	j := authzJSON{Identifier: a.Identifier, Status: s.authzStatus(a), Expires: rfc3339(a.Expires), Wildcard: a.Wildcard}
	for _, c := range a.Challenges {
		// A valid authorization lists only the challenge that validated it.
		if a.Status == StatusValid && c.Status != StatusValid {
			continue
		}
		j.Challenges = append(j.Challenges, s.challengeJSON(a, c))
	}
	if j.Challenges == nil {
		j.Challenges = []challengeJSON{}
	}
	return j
}

func (s *Server) loadOwnAuthz(q *request, id string) (*Authz, *Problem) {
	a, err := s.st.GetAuthz(q.r.Context(), id)
	if err != nil {
		return nil, s.internalErr("get authz", err)
	}
	if a.AccountID != q.acct.ID {
		return nil, unauthorized("this authorization belongs to another account")
	}
	return a, nil
}

// handleAuthz: POST-as-GET and deactivation (RFC 8555 §7.5, §7.5.2).
func (s *Server) handleAuthz(w http.ResponseWriter, q *request) *Problem {
	id := q.r.PathValue("id")
	if q.postAsGet() {
		a, p := s.loadOwnAuthz(q, id)
		if p != nil {
			return p
		}
		if a.Status == StatusPending && s.pendingValidation(a) {
			retryAfter(w, s.cfg.RetryAfter)
		}
		return s.writeJSON(w, http.StatusOK, "", s.authzJSON(a))
	}
	var req struct {
		Status string `json:"status"`
	}
	if p := decodePayload(q.payload, &req); p != nil {
		return p
	}
	if req.Status != StatusDeactivated {
		return malformed("an authorization's status may only be set to deactivated")
	}
	defer s.lock(id)()
	a, p := s.loadOwnAuthz(q, id)
	if p != nil {
		return p
	}
	if st := s.authzStatus(a); st != StatusPending && st != StatusValid {
		return unauthorized("authorization is " + st + " and cannot be deactivated")
	}
	a.Status = StatusDeactivated
	if err := s.st.UpdateAuthz(q.r.Context(), a, "", false); err != nil {
		return s.internalErr("update authz", err)
	}
	return s.writeJSON(w, http.StatusOK, "", s.authzJSON(a))
}

func (s *Server) pendingValidation(a *Authz) bool {
	for _, c := range a.Challenges {
		if c.Status == StatusProcessing {
			return true
		}
	}
	return false
}

// handleChallenge answers a challenge and starts its validation
// (RFC 8555 §7.5.1). A POST-as-GET only reads it.
func (s *Server) handleChallenge(w http.ResponseWriter, q *request) *Problem {
	id, typ := q.r.PathValue("id"), q.r.PathValue("type")
	up := func() {
		w.Header().Add("Link", `<`+s.url(pAuthz+id)+`>;rel="up"`)
	}
	find := func(a *Authz) *Challenge {
		for _, c := range a.Challenges {
			if c.Type == typ {
				return c
			}
		}
		return nil
	}
	if q.postAsGet() {
		a, p := s.loadOwnAuthz(q, id)
		if p != nil {
			return p
		}
		c := find(a)
		if c == nil {
			return notFound()
		}
		up()
		if c.Status == StatusProcessing {
			retryAfter(w, s.cfg.RetryAfter)
		}
		return s.writeJSON(w, http.StatusOK, "", s.challengeJSON(a, c))
	}
	var req map[string]any
	if p := decodePayload(q.payload, &req); p != nil {
		return p
	}
	ctx := q.r.Context()
	unlock := s.lock(id)
	a, p := s.loadOwnAuthz(q, id)
	if p != nil {
		unlock()
		return p
	}
	c := find(a)
	if c == nil {
		unlock()
		return notFound()
	}
	start := s.authzStatus(a) == StatusPending && c.Status == StatusPending && !s.pendingValidation(a)
	if start {
		if _, busy := s.validating.LoadOrStore(a.ID, struct{}{}); busy {
			start = false
			c.Status = StatusProcessing // an attempt of this request's twin is running
		}
	}
	unlock()
	if start {
		if c, p = s.validateInline(ctx, a, c, q.acct.KeyThumb); p != nil {
			return p
		}
	}
	up()
	if c.Status == StatusProcessing {
		retryAfter(w, s.cfg.RetryAfter)
	}
	return s.writeJSON(w, http.StatusOK, "", s.challengeJSON(a, c))
}

// inlineWait bounds the first validation attempt, which runs while the
// client waits.
const inlineWait = 3 * time.Second

// validateInline runs the first attempt in the request if a validation
// slot is free (the pool's cap bounds these attempts too). Success is
// stored in one write (a crash before it leaves the challenge pending, and
// the client, which got no answer, answers it again). Otherwise, or if no
// slot is free, the challenge is stored as processing with a work record
// and the pool runs the further attempts (the first too when it did not
// run here). If that write fails the challenge stays pending and the client
// gets serverInternal, so that it answers the challenge again rather than
// wait. The caller has claimed a.ID in s.validating.
//
// The inline attempt is bounded by inlineWait and tied to the request, so
// its failure counts as an attempt only if neither cut it short: it ran
// with the whole ValidationTimeout (or ended before inlineWait) and the
// client did not go away. An attempt cut short is run again by the pool,
// under the server's context and with the whole timeout, as the first.
func (s *Server) validateInline(ctx context.Context, a *Authz, c *Challenge, thumb string) (*Challenge, *Problem) {
	defer s.validating.Delete(a.ID)
	done := 0         // attempts made that count: 1 if the inline one failed in full
	var last *Problem // its problem
	if s.val.tryAcquire() {
		wait := min(s.cfg.ValidationTimeout, inlineWait)
		ictx, cancel := context.WithTimeout(ctx, wait)
		p, err := s.val.attempt(ictx, a, c.Type, thumb, s.cfg.ValidationTimeout)
		cut := ctx.Err() != nil || (wait < s.cfg.ValidationTimeout && ictx.Err() != nil)
		cancel()
		s.val.release()
		if err == nil && p != nil && !cut {
			done, last = 1, p
		}
		if err == nil && (p == nil || done > s.cfg.ValidationRetries) {
			cur, err := s.val.settle(a.ID, c.Type, p, StatusPending)
			if cur != nil {
				*a = *cur
				if cc := findChallenge(cur, c.Type); cc != nil {
					return cc, nil
				}
				return c, nil
			}
			if err != nil {
				s.log.Warn("acme: validation: store the outcome; queueing it", "authz", a.ID, "err", err)
			}
		}
	}
	unlock := s.lock(a.ID)
	cur, err := s.st.GetAuthz(s.ctx, a.ID)
	if err != nil {
		unlock()
		return nil, s.internalErr("get authz", err)
	}
	cc := findChallenge(cur, c.Type)
	queued := false
	if cc.Status == StatusPending && s.authzStatus(cur) == StatusPending {
		cc.Status, cc.Attempts = StatusProcessing, done
		if last != nil {
			id := cur.Identifier
			last.Identifier = &id
			cc.Error = last // RFC 8555 §8.2: the error of each failed attempt
		}
		if err := s.st.UpdateAuthz(s.ctx, cur, WorkValidate+cur.ID+"/"+cc.Type, true); err != nil {
			unlock()
			return nil, s.internalErr("update authz", err)
		}
		queued = true
	}
	unlock()
	if queued {
		s.val.enqueue(cur.ID, cc.Type, done)
	}
	*a = *cur
	return cc, nil
}
