package acme

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"math/big"
	"net/http"
	"strings"
	"time"
)

// certByARIID finds a certificate by its RFC 9773 §4.1 CertID:
// base64url(AKI keyIdentifier) "." base64url(serial DER content octets).
func (s *Server) certByARIID(ctx context.Context, certID string) (*Cert, *Problem) {
	aki, serial, p := parseCertID(certID)
	if p != nil {
		return nil, p
	}
	c, err := s.st.GetCert(ctx, serial)
	if errors.Is(err, ErrNotFound) {
		return nil, prob(ProbMalformed, 404, "no certificate with this certID")
	} else if err != nil {
		return nil, s.internalErr("get certificate", err)
	}
	leaf, err := x509.ParseCertificate(c.DER)
	if err != nil || !bytes.Equal(leaf.AuthorityKeyId, aki) {
		return nil, prob(ProbMalformed, 404, "no certificate with this certID")
	}
	return c, nil
}

// parseCertID splits an RFC 9773 CertID into the authority key identifier
// and the serial as the store keys it (lower-case hex).
func parseCertID(certID string) (aki []byte, serial string, p *Problem) {
	akiB64, serB64, ok := strings.Cut(certID, ".")
	if !ok {
		return nil, "", malformed("certID must be keyIdentifier.serial in base64url")
	}
	aki, err1 := base64.RawURLEncoding.DecodeString(akiB64)
	ser, err2 := base64.RawURLEncoding.DecodeString(serB64)
	if err1 != nil || err2 != nil || len(aki) == 0 || len(aki) > 64 || len(ser) == 0 || len(ser) > 20 {
		return nil, "", malformed("certID must be keyIdentifier.serial in base64url")
	}
	return aki, new(big.Int).SetBytes(ser).Text(16), nil
}

// handleRenewalInfo implements RFC 9773 §4.2: the suggested renewal window
// is a fixed slice of the certificate's lifetime (RenewalStart..RenewalEnd),
// or "now" for a revoked certificate.
func (s *Server) handleRenewalInfo(w http.ResponseWriter, r *http.Request) {
	if ok, wait := s.limit.allow("ip:"+s.clientIP(r), s.cfg.RateLimits.IPRate, s.cfg.RateLimits.IPBurst); !ok {
		s.writeProblem(w, rateLimited("too many requests from your address", wait))
		return
	}
	c, p := s.certByARIID(r.Context(), r.PathValue("id"))
	if p != nil {
		s.writeProblem(w, p)
		return
	}
	life := c.NotAfter.Sub(c.NotBefore)
	start := c.NotBefore.Add(time.Duration(float64(life) * s.cfg.RenewalStart))
	end := c.NotBefore.Add(time.Duration(float64(life) * s.cfg.RenewalEnd))
	if c.Revoked {
		now := s.now()
		start, end = now.Add(-time.Hour), now.Add(-time.Minute)
	}
	type window struct {
		Start string `json:"start"`
		End   string `json:"end"`
	}
	w.Header().Set("Retry-After", "21600")
	s.writeJSON(w, http.StatusOK, "", struct {
		SuggestedWindow window `json:"suggestedWindow"`
	}{window{rfc3339(start), rfc3339(end)}})
}
