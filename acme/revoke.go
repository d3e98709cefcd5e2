package acme

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"net/http"
	"net/netip"
	"strings"

	jose "github.com/go-jose/go-jose/v4"
)

// allowedReasons are the RFC 5280 reason codes a subscriber may give
// (unspecified, keyCompromise, affiliationChanged, superseded,
// cessationOfOperation; the others are the CA's to decide).
var allowedReasons = map[int]bool{0: true, 1: true, 3: true, 4: true, 5: true}

// handleRevoke implements RFC 8555 §7.6: signed either by the account that
// owns the certificate (kid) or by the certificate's own key (jwk).
func (s *Server) handleRevoke(w http.ResponseWriter, q *request) *Problem {
	var req struct {
		Certificate string `json:"certificate"`
		Reason      *int   `json:"reason"`
	}
	if p := decodePayload(q.payload, &req); p != nil {
		return p
	}
	der, err := base64.RawURLEncoding.DecodeString(req.Certificate)
	if err != nil {
		return malformed("certificate is not base64url DER")
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return malformed("certificate does not parse")
	}
	reason := 0
	if req.Reason != nil {
		reason = *req.Reason
	}
	if !allowedReasons[reason] {
		return prob(ProbBadRevocationReason, 400, "reason must be one of 0, 1, 3, 4, 5")
	}
	ctx := q.r.Context()
	serial := serialHex(leaf)
	defer s.lockCert(serial)()
	c, err := s.st.GetCert(ctx, serial)
	if errors.Is(err, ErrNotFound) || (err == nil && !bytes.Equal(c.DER, der)) {
		return prob(ProbMalformed, 404, "this server did not issue that certificate")
	} else if err != nil {
		return s.internalErr("get certificate", err)
	}
	if q.jws.jwk != nil {
		if !sameKey(q.jws.jwk, leaf.PublicKey) {
			return unauthorized("the JWS is not signed by the certificate's key")
		}
	} else if c.AccountID != q.acct.ID {
		// RFC 8555 §7.6: an account that holds authorizations for every
		// identifier in the certificate may revoke it too.
		ok, err := s.authorizedForAll(ctx, q.acct.ID, leaf)
		if err != nil {
			return s.internalErr("find authorizations", err)
		}
		if !ok {
			return unauthorized("the certificate belongs to another account, and this account does not hold valid authorizations for all its identifiers")
		}
	}
	if c.Revoked {
		return prob(ProbAlreadyRevoked, 400, "certificate is already revoked")
	}
	if err := s.ca.Revoke(ctx, c.CASerial, reason); err != nil {
		p := toProblem(err)
		if p.Type == ProbServerInternal {
			s.log.Error("acme: revoke", "err", err)
		}
		return p
	}
	c.Revoked = true
	if err := s.st.UpdateCert(context.WithoutCancel(ctx), c); err != nil {
		return s.internalErr("update certificate", err)
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

func sameKey(k *jose.JSONWebKey, pub any) bool {
	eq, ok := k.Key.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(pub)
}

// authorizedForAll reports whether the account holds a valid, unexpired
// authorization for every identifier of leaf (its DNS names, wildcards as
// wildcard authorizations, and IP addresses); false for a certificate that
// names none.
func (s *Server) authorizedForAll(ctx context.Context, accountID string, leaf *x509.Certificate) (bool, error) {
	type want struct {
		id   Identifier
		wild bool
	}
	var ids []want
	for _, n := range leaf.DNSNames {
		v := strings.ToLower(n)
		ids = append(ids, want{Identifier{Type: "dns", Value: strings.TrimPrefix(v, "*.")}, strings.HasPrefix(v, "*.")})
	}
	for _, ip := range leaf.IPAddresses {
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			return false, nil
		}
		ids = append(ids, want{Identifier{Type: "ip", Value: a.Unmap().String()}, false})
	}
	if len(ids) == 0 {
		return false, nil
	}
	now := s.now()
	for _, w := range ids {
		a, err := s.st.FindValidAuthz(ctx, accountID, w.id, w.wild)
		if errors.Is(err, ErrNotFound) {
			return false, nil
		} else if err != nil {
			return false, err
		}
		if s.authzStatus(a) != StatusValid || !a.Expires.After(now) {
			return false, nil
		}
	}
	return true, nil
}
