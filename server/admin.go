package server

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hsmca/hsmca/ca"
)

// errSealedNow marks an issuance refused before any work because the
// partition is not active.
var errSealedNow = errors.New("server: sealed")

// maxListLimit bounds one page of `cert list`.
const (
	defaultListLimit = 100
	maxListLimit     = 1000
)

// adminHandler serves the admin API routes (see api.go). Authentication is
// the listener's business: requireOperator on HTTPS, file permissions on
// the socket.
func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /admin/hsm/status", s.handleStatus)
	mux.HandleFunc("POST /admin/hsm/activate", s.handleActivate)
	mux.HandleFunc("POST /admin/hsm/seal", s.handleSeal)
	mux.HandleFunc("POST /admin/cert/issue", s.handleIssue)
	mux.HandleFunc("POST /admin/cert/revoke", s.handleRevoke)
	mux.HandleFunc("POST /admin/cert/unrevoke", s.handleUnrevoke)
	mux.HandleFunc("GET /admin/cert/list", s.handleList)
	mux.HandleFunc("GET /admin/cert/show/{serial}", s.handleShow)
	mux.HandleFunc("POST /admin/crl/generate", s.handleCRLGenerate)
	s.eabRoutes(mux)
	mux.HandleFunc("GET /healthz", s.handleHealth)
	return mux
}

// requireOperator admits a request only with a client certificate that
// chains to the current operator roots with the clientAuth EKU, and that
// this CA issued with the operator profile and has not revoked.
func (s *Server) requireOperator(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := s.checkOperator(r); err != nil {
			status := http.StatusForbidden
			if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
				status = http.StatusUnauthorized
			}
			s.log.Warn("server: admin request refused", "remote", r.RemoteAddr, "path", r.URL.Path, "reason", err.Error())
			writeProblem(w, problemf(status, ProbUnauthorized, "%s", err.Error()))
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (s *Server) checkOperator(r *http.Request) error {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return errors.New("the admin API needs an operator client certificate (mutual TLS)")
	}
	leaf := r.TLS.PeerCertificates[0]
	// The handshake checked validity when the connection was made; a
	// connection kept alive must not outlive its certificate.
	now := time.Now()
	if now.After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
		return fmt.Errorf("client certificate %s is not valid now (valid from %s to %s)",
			ca.SerialString(leaf.SerialNumber), leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	hasClientAuth := false
	for _, eku := range leaf.ExtKeyUsage {
		if eku == x509.ExtKeyUsageClientAuth {
			hasClientAuth = true
		}
	}
	if !hasClientAuth {
		return errors.New("the client certificate lacks the clientAuth extended key usage")
	}
	// The handshake's verified chains were made against the roots of that
	// moment; a reload may have removed them since, so verify again
	// against the current pool (never the system roots, which a nil pool
	// would mean).
	pool := s.operatorRoots()
	if pool == nil {
		return errors.New("the client certificate does not chain to the operator CA")
	}
	inter := x509.NewCertPool()
	for _, c := range r.TLS.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return errors.New("the client certificate does not chain to the operator CA")
	}
	serial := ca.SerialString(leaf.SerialNumber)
	rec, err := s.CA().Get(r.Context(), serial)
	if err != nil {
		if errors.Is(err, ca.ErrUnknownSerial) {
			return fmt.Errorf("client certificate %s was not issued by this CA", serial)
		}
		return fmt.Errorf("client certificate %s: lookup failed", serial)
	}
	if !bytes.Equal(rec.DER, leaf.Raw) {
		return fmt.Errorf("client certificate %s does not match this CA's record", serial)
	}
	if rec.Status != ca.StatusValid {
		return fmt.Errorf("client certificate %s is %s", serial, rec.Status)
	}
	if rec.Profile != s.cfg.OperatorProfile {
		return fmt.Errorf("client certificate %s was issued with profile %s, not %s", serial, rec.Profile, s.cfg.OperatorProfile)
	}
	return nil
}

// decodeBody strictly decodes a JSON body of at most MaxBodyBytes.
func (s *Server) decodeBody(w http.ResponseWriter, r *http.Request, v any) *Problem {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return problemf(http.StatusRequestEntityTooLarge, ProbTooLarge, "request body larger than %d bytes", mbe.Limit)
		}
		return problemf(http.StatusBadRequest, ProbMalformed, "reading the request failed")
	}
	if err := DecodeJSON(body, v); err != nil {
		return problemf(http.StatusBadRequest, ProbMalformed, "%s", err.Error())
	}
	return nil
}

// DecodeJSON decodes one admin API request body strictly: unknown fields
// and trailing data are errors. It is the parser of the admin API's outside
// input (see FuzzDecodeJSON).
func DecodeJSON(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("server: request body: %v", err)
	}
	if dec.More() {
		return errors.New("server: request body: trailing data after the JSON object")
	}
	return nil
}

// ---- hsm ----

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	q, err := s.quorumStatus()
	if err != nil {
		writeProblem(w, s.quorumProblem(r, err))
		return
	}
	writeJSON(w, http.StatusOK, q)
}

func (s *Server) handleActivate(w http.ResponseWriter, r *http.Request) {
	var req ActivateRequest
	if p := s.decodeBody(w, r, &req); p != nil {
		writeProblem(w, p)
		return
	}
	if strings.TrimSpace(req.Share) == "" {
		writeProblem(w, problemf(http.StatusBadRequest, ProbMalformed, "share is empty"))
		return
	}
	before, _ := s.quorumStatus()
	q, err := s.d.Quorum.AddShare([]byte(req.Share))
	if err != nil {
		s.log.Warn("server: share refused", "remote", r.RemoteAddr, "reason", trimPrefix(err))
		writeProblem(w, s.quorumProblem(r, err))
		return
	}
	s.m.setQuorum(q)
	s.log.Info("server: share accepted", "partition", q.Partition, "presented", q.Presented, "threshold", q.Threshold, "state", q.State)
	if q.Active() && !before.Active() {
		s.log.Info("server: CA active", "partition", q.Partition)
		s.KickCRL()
	}
	writeJSON(w, http.StatusOK, q)
}

func (s *Server) handleSeal(w http.ResponseWriter, r *http.Request) {
	if err := s.d.Quorum.Seal(); err != nil {
		writeProblem(w, s.quorumProblem(r, err))
		return
	}
	q, err := s.quorumStatus()
	if err != nil {
		writeProblem(w, s.quorumProblem(r, err))
		return
	}
	s.log.Info("server: sealed by admin request", "partition", q.Partition, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, q)
}

// ---- cert ----

// ParseCSRPEM returns the DER of the first CERTIFICATE REQUEST block in b.
func ParseCSRPEM(b []byte) ([]byte, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("server: csr: no PEM block")
	}
	if blk.Type != "CERTIFICATE REQUEST" && blk.Type != "NEW CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("server: csr: PEM block %q, want CERTIFICATE REQUEST", blk.Type)
	}
	return blk.Bytes, nil
}

func (s *Server) handleIssue(w http.ResponseWriter, r *http.Request) {
	var req IssueRequest
	if p := s.decodeBody(w, r, &req); p != nil {
		writeProblem(w, p)
		return
	}
	der, err := ParseCSRPEM([]byte(req.CSR))
	if err != nil {
		writeProblem(w, problemf(http.StatusBadRequest, ProbBadCSR, "%s", err.Error()))
		return
	}
	if req.Profile == "" {
		writeProblem(w, problemf(http.StatusBadRequest, ProbMalformed, "profile is required"))
		return
	}
	// Refuse before linting and reserving a serial: a sealed CA would
	// only leave a pending record behind.
	if q, err := s.quorumStatus(); err == nil && !q.Active() {
		s.m.ObserveIssuance("admin", 0, errSealedNow)
		writeProblem(w, s.sealedProblem())
		return
	}
	start := time.Now()
	cert, err := s.CA().Issue(r.Context(), ca.IssueRequest{
		CSR: der, Profile: req.Profile, Issuer: req.Issuer, NotBefore: req.NotBefore, NotAfter: req.NotAfter,
	})
	s.m.ObserveIssuance("admin", time.Since(start), err)
	if err != nil {
		writeProblem(w, s.caProblem(r, err))
		return
	}
	s.log.Info("server: certificate issued", "serial", cert.Serial, "profile", cert.Profile, "issuer", cert.Issuer, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusCreated, certInfo(cert, true))
}

func (s *Server) handleRevoke(w http.ResponseWriter, r *http.Request) {
	var req RevokeRequest
	if p := s.decodeBody(w, r, &req); p != nil {
		writeProblem(w, p)
		return
	}
	serial, err := ca.ParseSerial(req.Serial)
	if err != nil {
		writeProblem(w, problemf(http.StatusBadRequest, ProbMalformed, "%s", err.Error()))
		return
	}
	reason := ca.ReasonUnspecified
	if req.Reason != "" {
		if reason, err = ca.ParseReason(req.Reason); err != nil {
			writeProblem(w, problemf(http.StatusBadRequest, ProbMalformed, "%s", err.Error()))
			return
		}
	}
	cert, err := s.CA().Revoke(r.Context(), serial, reason)
	if err != nil {
		writeProblem(w, s.caProblem(r, err))
		return
	}
	s.ocspLast.forget(cert.Serial)
	s.KickCRL()
	s.log.Info("server: certificate revoked", "serial", cert.Serial, "reason", ca.ReasonString(reason), "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, certInfo(cert, false))
}

// handleUnrevoke takes a certificate off certificateHold (RFC 5280
// §5.3.1); any other state is 409. The next CRLs leave it out and OCSP
// answers good again.
func (s *Server) handleUnrevoke(w http.ResponseWriter, r *http.Request) {
	var req UnrevokeRequest
	if p := s.decodeBody(w, r, &req); p != nil {
		writeProblem(w, p)
		return
	}
	serial, err := ca.ParseSerial(req.Serial)
	if err != nil {
		writeProblem(w, problemf(http.StatusBadRequest, ProbMalformed, "%s", err.Error()))
		return
	}
	cert, err := s.CA().Unrevoke(r.Context(), serial)
	if err != nil {
		writeProblem(w, s.caProblem(r, err))
		return
	}
	s.ocspLast.forget(cert.Serial)
	s.KickCRL()
	s.log.Info("server: certificate taken off hold", "serial", cert.Serial, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, certInfo(cert, false))
}

// Revoked tells the server that a certificate was revoked elsewhere (ACME):
// it drops the serial's last OCSP answer and schedules new CRLs.
func (s *Server) Revoked(serial string) {
	s.ocspLast.forget(serial)
	s.KickCRL()
}

func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := ca.ListFilter{Issuer: q.Get("issuer"), Profile: q.Get("profile"), After: q.Get("after"), Limit: defaultListLimit}
	var err error
	if f.Revoked, err = boolParam(q.Get("revoked")); err != nil {
		writeProblem(w, problemf(http.StatusBadRequest, ProbMalformed, "revoked: %v", err))
		return
	}
	if f.Pending, err = boolParam(q.Get("pending")); err != nil {
		writeProblem(w, problemf(http.StatusBadRequest, ProbMalformed, "pending: %v", err))
		return
	}
	if f.Refused, err = boolParam(q.Get("refused")); err != nil {
		writeProblem(w, problemf(http.StatusBadRequest, ProbMalformed, "refused: %v", err))
		return
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxListLimit {
			writeProblem(w, problemf(http.StatusBadRequest, ProbMalformed, "limit: want 1..%d", maxListLimit))
			return
		}
		f.Limit = n
	}
	if v := q.Get("expiring_within"); v != "" {
		d, err := ca.ParseDuration(v)
		if err == nil && d.D() <= 0 {
			err = errors.New("want a positive duration such as 30d")
		}
		if err != nil {
			writeProblem(w, problemf(http.StatusBadRequest, ProbMalformed, "expiring_within: %v", err))
			return
		}
		f.ExpiringWithin = d.D()
	}
	if f.After != "" {
		if f.After, err = ca.ParseSerial(f.After); err != nil {
			writeProblem(w, problemf(http.StatusBadRequest, ProbMalformed, "after: %v", err))
			return
		}
	}
	certs, err := s.CA().List(r.Context(), f)
	if err != nil {
		writeProblem(w, s.caProblem(r, err))
		return
	}
	out := CertList{Certificates: make([]CertInfo, 0, len(certs))}
	for _, c := range certs {
		out.Certificates = append(out.Certificates, certInfo(c, false))
	}
	if len(certs) == f.Limit {
		out.Next = certs[len(certs)-1].Serial
	}
	writeJSON(w, http.StatusOK, out)
}

func boolParam(v string) (bool, error) {
	if v == "" {
		return false, nil
	}
	return strconv.ParseBool(v)
}

func (s *Server) handleShow(w http.ResponseWriter, r *http.Request) {
	serial, err := ca.ParseSerial(r.PathValue("serial"))
	if err != nil {
		writeProblem(w, problemf(http.StatusBadRequest, ProbMalformed, "%s", err.Error()))
		return
	}
	cert, err := s.CA().Get(r.Context(), serial)
	if err != nil {
		writeProblem(w, s.caProblem(r, err))
		return
	}
	writeJSON(w, http.StatusOK, certInfo(cert, true))
}

// ---- crl ----

func (s *Server) handleCRLGenerate(w http.ResponseWriter, r *http.Request) {
	var req CRLRequest
	if p := s.decodeBody(w, r, &req); p != nil {
		writeProblem(w, p)
		return
	}
	if q, err := s.quorumStatus(); err == nil && !q.Active() {
		writeProblem(w, s.sealedProblem())
		return
	}
	crls, failed, def := s.generateCRLsEach(r.Context(), req.Issuer)
	if len(crls) == 0 && len(failed) > 0 {
		// Nothing made (one issuer asked for, or every issuer failed):
		// the first failure's problem.
		writeProblem(w, s.caProblem(r, failed[0].err))
		return
	}
	info := CRLInfo{CRLs: crls, DefaultIssuer: def}
	for _, f := range failed {
		reason := s.caProblem(r, f.err).Detail
		if errors.Is(f.err, ca.ErrSealed) {
			// The server's quorum is active (it made other CRLs): this
			// issuer's key is in a partition it does not activate.
			reason = "the key of issuer " + f.issuer + " is in a sealed partition; its CRL is made where that partition is active"
		}
		info.Failed = append(info.Failed, CRLFailure{Issuer: f.issuer, Reason: reason})
	}
	writeJSON(w, http.StatusOK, info)
}

// certInfo converts a ca.Certificate; withPEM adds the certificate and its
// chain.
func certInfo(c *ca.Certificate, withPEM bool) CertInfo {
	ci := CertInfo{
		Serial: c.Serial, Issuer: c.Issuer, Profile: c.Profile, Status: string(c.Status),
		Names: c.Names, NotBefore: c.NotBefore, NotAfter: c.NotAfter, CTFailures: c.CTFailures,
	}
	if c.Status == ca.StatusRevoked {
		ci.RevokedAt = c.RevokedAt
		ci.Reason = ca.ReasonString(c.Reason)
	}
	if withPEM && len(c.DER) > 0 {
		ci.Certificate = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.DER}))
		var chain bytes.Buffer
		for _, der := range c.Chain {
			pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: der})
		}
		ci.Chain = chain.String()
	}
	return ci
}
