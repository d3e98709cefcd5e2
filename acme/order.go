package acme

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

type orderJSON struct {
	Status         string       `json:"status"`
	Expires        string       `json:"expires,omitempty"`
	Identifiers    []Identifier `json:"identifiers"`
	NotBefore      string       `json:"notBefore,omitempty"`
	NotAfter       string       `json:"notAfter,omitempty"`
	Profile        string       `json:"profile,omitempty"`
	Replaces       string       `json:"replaces,omitempty"`
	Error          *Problem     `json:"error,omitempty"`
	Authorizations []string     `json:"authorizations"`
	Finalize       string       `json:"finalize"`
	Certificate    string       `json:"certificate,omitempty"`
}

func rfc3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func (s *Server) orderJSON(o *Order, status string) orderJSON {
	j := orderJSON{Status: status, Expires: rfc3339(o.Expires), Identifiers: o.Identifiers,
		NotBefore: rfc3339(o.NotBefore), NotAfter: rfc3339(o.NotAfter), Profile: o.Profile,
		Replaces: o.Replaces, Error: o.Error, Finalize: s.url(pOrder + o.ID + "/finalize")}
	j.Authorizations = make([]string, len(o.Authzs))
	for i, id := range o.Authzs {
		j.Authorizations[i] = s.url(pAuthz + id)
	}
	if o.CertSerial != "" {
		j.Certificate = s.url(pCert + o.CertSerial)
	}
	return j
}

// orderStatus derives the order's status (RFC 8555 §7.1.6) from what is
// stored and from its authorizations.
func (s *Server) orderStatus(ctx context.Context, o *Order) (string, error) {
	if o.Status != StatusPending {
		return o.Status, nil
	}
	now := s.now()
	if now.After(o.Expires) {
		return StatusInvalid, nil
	}
	ready := true
	for _, id := range o.Authzs {
		a, err := s.st.GetAuthz(ctx, id)
		if errors.Is(err, ErrNotFound) {
			// Pruned: it expired more than the retention ago.
			return StatusInvalid, nil
		} else if err != nil {
			return "", err
		}
		switch s.authzStatus(a) {
		case StatusValid:
		case StatusPending:
			ready = false
		default:
			return StatusInvalid, nil
		}
	}
	if ready {
		return StatusReady, nil
	}
	return StatusPending, nil
}

// normalizeIdentifier checks one identifier and returns its canonical form
// (RFC 8555 §7.1.4, RFC 8738 for IP addresses).
func normalizeIdentifier(id Identifier) (Identifier, bool, *Problem) {
	switch id.Type {
	case "dns":
		v := strings.ToLower(id.Value)
		wild := strings.HasPrefix(v, "*.")
		name := strings.TrimPrefix(v, "*.")
		if !validDNSName(name) {
			return id, false, rejected(id, "not a valid DNS name")
		}
		if _, err := netip.ParseAddr(name); err == nil {
			return id, false, rejected(id, "an IP address must use the ip identifier type")
		}
		return Identifier{Type: "dns", Value: v}, wild, nil
	case "ip":
		a, err := netip.ParseAddr(id.Value)
		if err != nil || a.Zone() != "" {
			return id, false, rejected(id, "not a valid IP address")
		}
		return Identifier{Type: "ip", Value: a.Unmap().String()}, false, nil
	}
	return id, false, &Problem{Type: ProbUnsupportedIdentifier, Status: 400,
		Detail: "identifier type " + quoteShort(id.Type) + " is not supported", Identifier: &id}
}

func rejected(id Identifier, reason string) *Problem {
	return &Problem{Type: ProbRejectedIdentifier, Status: 400, Detail: quoteShort(id.Value) + ": " + reason, Identifier: &id}
}

func validDNSName(n string) bool {
	if len(n) == 0 || len(n) > 253 || strings.HasSuffix(n, ".") {
		return false
	}
	// One label is a name too: in a private PKI single-label hosts ("db")
	// are legitimate; the CA's name policy decides which are allowed.
	for _, l := range strings.Split(n, ".") {
		if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

type newOrderReq struct {
	Identifiers []Identifier `json:"identifiers"`
	NotBefore   string       `json:"notBefore"`
	NotAfter    string       `json:"notAfter"`
	Profile     string       `json:"profile"`
	Replaces    string       `json:"replaces"`
}

// handleNewOrder implements RFC 8555 §7.4 with profiles and "replaces"
// (RFC 9773 §5).
func (s *Server) handleNewOrder(w http.ResponseWriter, q *request) *Problem {
	rl := &s.cfg.RateLimits
	if ok, wait := s.limit.allow("o:"+q.acct.ID, rl.NewOrderRate, rl.NewOrderBurst); !ok {
		return rateLimited("too many new orders for this account", wait)
	}
	var req newOrderReq
	if p := decodePayload(q.payload, &req); p != nil {
		return p
	}
	if len(req.Identifiers) == 0 {
		return malformed("an order needs at least one identifier")
	}
	if len(req.Identifiers) > s.cfg.MaxIdentifiers {
		return prob(ProbRejectedIdentifier, 400, "too many identifiers in one order")
	}
	ids := make([]Identifier, 0, len(req.Identifiers))
	wild := make([]bool, 0, len(req.Identifiers))
	var subs []*Problem
	for _, id := range req.Identifiers {
		n, w, p := normalizeIdentifier(id)
		if p != nil {
			subs = append(subs, p)
			continue
		}
		if slices.Contains(ids, n) {
			continue
		}
		ids = append(ids, n)
		wild = append(wild, w)
	}
	if len(subs) > 0 {
		top := *subs[0]
		top.Identifier = nil
		if len(subs) > 1 {
			top.Detail = "several identifiers were refused; see subproblems"
		}
		top.Subproblems = subs
		return &top
	}
	o := &Order{ID: newID(), AccountID: q.acct.ID, Status: StatusPending, Identifiers: ids, Created: s.now().UTC()}
	o.Expires = o.Created.Add(s.cfg.OrderLifetime)
	o.Profile = req.Profile
	if o.Profile == "" {
		o.Profile = s.cfg.DefaultProfile
	} else if _, ok := s.cfg.Profiles[o.Profile]; !ok {
		return prob(ProbInvalidProfile, 400, "unknown profile "+quoteShort(req.Profile))
	}
	if req.NotBefore != "" || req.NotAfter != "" {
		if !s.cfg.AllowValidityRequest {
			return malformed("this server does not accept notBefore/notAfter in orders")
		}
		var err error
		if req.NotBefore != "" {
			if o.NotBefore, err = time.Parse(time.RFC3339, req.NotBefore); err != nil {
				return malformed("notBefore is not an RFC 3339 date")
			}
		}
		if req.NotAfter != "" {
			if o.NotAfter, err = time.Parse(time.RFC3339, req.NotAfter); err != nil {
				return malformed("notAfter is not an RFC 3339 date")
			}
		}
		if !o.NotBefore.IsZero() && !o.NotAfter.IsZero() && !o.NotBefore.Before(o.NotAfter) {
			return malformed("notBefore must be before notAfter")
		}
	}
	ctx := q.r.Context()
	if p := s.checkNames(o.Profile, ids); p != nil {
		return p
	}
	if req.Replaces != "" {
		// Held until the order is stored, so that of two orders naming
		// the same certificate only one passes (lock order: see lockCert).
		_, serial, p := parseCertID(req.Replaces)
		if p != nil {
			return p
		}
		defer s.lockCert(serial)()
		if p := s.claimReplaced(ctx, q.acct.ID, req.Replaces, o); p != nil {
			return p
		}
		o.Replaces = req.Replaces
	}
	now := s.now()
	var fresh []*Authz
	for i, id := range ids {
		if s.cfg.AuthzReuse > 0 {
			look := id
			look.Value = strings.TrimPrefix(id.Value, "*.")
			a, err := s.st.FindValidAuthz(ctx, q.acct.ID, look, wild[i])
			if err == nil && s.authzStatus(a) == StatusValid && a.Expires.After(o.Expires) && s.validatedAt(a).Add(s.cfg.AuthzReuse).After(now) {
				o.Authzs = append(o.Authzs, a.ID)
				continue
			} else if err != nil && !errors.Is(err, ErrNotFound) {
				return s.internalErr("find authz", err)
			}
		}
		a := s.newAuthz(q.acct.ID, id, wild[i], o.Expires)
		fresh = append(fresh, a)
		o.Authzs = append(o.Authzs, a.ID)
	}
	if err := s.st.CreateOrder(ctx, o, fresh); err != nil {
		return s.internalErr("create order", err)
	}
	status, err := s.orderStatus(ctx, o)
	if err != nil {
		return s.internalErr("order status", err)
	}
	return s.writeJSON(w, http.StatusCreated, s.url(pOrder+o.ID), s.orderJSON(o, status))
}

// checkNames applies the CA's name policy to an order's identifiers. The
// CA stops at the first name it refuses, so after a refusal each
// identifier is checked alone, to give one subproblem per refused
// identifier (RFC 8555 §6.7.1). A refusal that no single identifier
// causes (too many names for the profile) has no subproblem.
func (s *Server) checkNames(profile string, ids []Identifier) *Problem {
	err := s.ca.CheckNames(profile, ids)
	if err == nil {
		return nil
	}
	var whole *RejectedError
	if !errors.As(err, &whole) || len(ids) < 2 {
		return s.namesProblem(err)
	}
	var subs []*Problem
	for _, id := range ids {
		err := s.ca.CheckNames(profile, []Identifier{id})
		if err == nil {
			continue
		}
		var re *RejectedError
		if !errors.As(err, &re) {
			return s.namesProblem(err)
		}
		sub := rejected(id, re.Reason)
		sub.Status = 0
		subs = append(subs, sub)
	}
	switch len(subs) {
	case 0:
		return prob(ProbRejectedIdentifier, http.StatusBadRequest, whole.Reason)
	case 1:
		return &Problem{Type: ProbRejectedIdentifier, Status: http.StatusBadRequest, Detail: subs[0].Detail, Subproblems: subs}
	}
	return &Problem{Type: ProbRejectedIdentifier, Status: http.StatusBadRequest,
		Detail: strconv.Itoa(len(subs)) + " identifiers were refused; see subproblems", Subproblems: subs}
}

func (s *Server) namesProblem(err error) *Problem {
	p := toProblem(err)
	if p.Type == ProbServerInternal {
		s.log.Error("acme: check names", "err", err)
	}
	return p
}

// claimReplaced checks the certificate that the new order o names in
// replaces (RFC 9773 §5) and records o as its replacement. The
// certificate must belong to the account and share an identifier with o,
// and no other order may be replacing it: alreadyReplaced (409) if an
// order that replaced it became valid, or if the last order that named
// it is not invalid. The record is written before o is stored, so a crash
// between the two leaves a ReplacedBy naming an order that does not
// exist, which blocks nothing. The caller holds the certificate's lock.
func (s *Server) claimReplaced(ctx context.Context, acctID, certID string, o *Order) *Problem {
	c, p := s.certByARIID(ctx, certID)
	if p != nil {
		return p
	}
	if c.AccountID != acctID {
		return unauthorized("the certificate named in replaces belongs to another account")
	}
	leaf, err := x509.ParseCertificate(c.DER)
	if err != nil {
		return s.internalErr("parse replaced certificate", err)
	}
	if !sharesIdentifier(leaf, o.Identifiers) {
		return malformed("the order shares no identifier with the certificate named in replaces")
	}
	if c.Replaced {
		return prob(ProbAlreadyReplaced, http.StatusConflict, "the certificate named in replaces was already replaced")
	}
	if c.ReplacedBy != "" {
		prev, err := s.st.GetOrder(ctx, c.ReplacedBy)
		switch {
		case errors.Is(err, ErrNotFound):
		case err != nil:
			return s.internalErr("get replacing order", err)
		default:
			st, err := s.orderStatus(ctx, prev)
			if err != nil {
				return s.internalErr("order status", err)
			}
			if st != StatusInvalid {
				return prob(ProbAlreadyReplaced, http.StatusConflict,
					"another order replacing this certificate is "+st+": "+s.url(pOrder+prev.ID))
			}
		}
	}
	c.ReplacedBy = o.ID
	if err := s.st.UpdateCert(ctx, c); err != nil {
		return s.internalErr("record replacing order", err)
	}
	return nil
}

// sharesIdentifier reports whether leaf names at least one of ids
// (normalized as normalizeIdentifier does; a wildcard matches only the
// same wildcard).
func sharesIdentifier(leaf *x509.Certificate, ids []Identifier) bool {
	for _, id := range ids {
		switch id.Type {
		case "dns":
			for _, n := range leaf.DNSNames {
				if strings.EqualFold(n, id.Value) {
					return true
				}
			}
		case "ip":
			want, err := netip.ParseAddr(id.Value)
			if err != nil {
				continue
			}
			for _, ip := range leaf.IPAddresses {
				if a, ok := netip.AddrFromSlice(ip); ok && a.Unmap() == want {
					return true
				}
			}
		}
	}
	return false
}

// newToken is a challenge token: 256 random bits, base64url (RFC 8555 §8.1
// wants at least 128 and a well-formed base64url string).
func newToken() string {
	var b [32]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func (s *Server) validatedAt(a *Authz) time.Time {
	for _, c := range a.Challenges {
		if c.Status == StatusValid {
			return c.Validated
		}
	}
	return time.Time{}
}

func (s *Server) newAuthz(acct string, id Identifier, wild bool, expires time.Time) *Authz {
	a := &Authz{ID: newID(), AccountID: acct, Identifier: id, Wildcard: wild, Status: StatusPending,
		Expires: expires, Token: newToken()}
	if wild {
		a.Identifier.Value = strings.TrimPrefix(id.Value, "*.")
	}
	switch {
	case wild:
		a.Challenges = []*Challenge{{Type: ChallengeDNS01, Status: StatusPending}}
	case id.Type == "ip":
		a.Challenges = []*Challenge{{Type: ChallengeHTTP01, Status: StatusPending}, {Type: ChallengeTLSALPN01, Status: StatusPending}}
	default:
		a.Challenges = []*Challenge{{Type: ChallengeHTTP01, Status: StatusPending}, {Type: ChallengeDNS01, Status: StatusPending}, {Type: ChallengeTLSALPN01, Status: StatusPending}}
	}
	return a
}

// loadOwnOrder reads an order the requesting account owns.
func (s *Server) loadOwnOrder(q *request) (*Order, *Problem) {
	o, err := s.st.GetOrder(q.r.Context(), q.r.PathValue("id"))
	if err != nil {
		return nil, s.internalErr("get order", err)
	}
	if o.AccountID != q.acct.ID {
		return nil, unauthorized("this order belongs to another account")
	}
	return o, nil
}

func (s *Server) handleOrder(w http.ResponseWriter, q *request) *Problem {
	if !q.postAsGet() {
		return malformed("an order is read with POST-as-GET")
	}
	o, p := s.loadOwnOrder(q)
	if p != nil {
		return p
	}
	return s.writeOrder(w, q, o, http.StatusOK)
}

func (s *Server) writeOrder(w http.ResponseWriter, q *request, o *Order, code int) *Problem {
	status, err := s.orderStatus(q.r.Context(), o)
	if err != nil {
		return s.internalErr("order status", err)
	}
	if status == StatusProcessing {
		retryAfter(w, s.cfg.RetryAfter)
	}
	return s.writeJSON(w, code, s.url(pOrder+o.ID), s.orderJSON(o, status))
}
