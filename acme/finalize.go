package acme

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"
)

// handleFinalize implements RFC 8555 §7.4. Issuance starts at once. If the
// CA answers within FinalizeWait, the reply carries the final state and the
// order costs one durable write (the certificate and the valid order
// together); a crash before that write leaves the order ready, and the
// client, which got no answer, finalizes again. Otherwise the order is
// written as processing (with a work record) before the reply says so,
// and issuance completes in the background. If the CA is unavailable
// (sealed) the order stays ready and the client gets 503 with
// Retry-After.
func (s *Server) handleFinalize(w http.ResponseWriter, q *request) *Problem {
	var req struct {
		CSR string `json:"csr"`
	}
	if p := decodePayload(q.payload, &req); p != nil {
		return p
	}
	der, err := base64.RawURLEncoding.DecodeString(req.CSR)
	if err != nil || len(der) == 0 {
		return malformed("csr is not base64url DER")
	}
	ctx := q.r.Context()
	id := q.r.PathValue("id")
	unlock := s.lock(id)
	o, p := s.loadOwnOrder(q)
	if p != nil {
		unlock()
		return p
	}
	status, err := s.orderStatus(ctx, o)
	if err != nil {
		unlock()
		return s.internalErr("order status", err)
	}
	if status != StatusReady {
		unlock()
		return prob(ProbOrderNotReady, 403, "order is "+status+", not ready")
	}
	csr, p := s.checkCSR(q, o, der)
	if p != nil {
		unlock()
		return p
	}
	if _, busy := s.finalizing.LoadOrStore(o.ID, struct{}{}); busy {
		unlock()
		return prob(ProbOrderNotReady, 403, "order is being finalized")
	}
	unlock()
	o.CSR = der

	// state: 0 issuing, 1 result handed to this request, 2 left to the
	// background. Transitions happen under the order's lock, so the
	// background never writes before the processing state is stored.
	var state atomic.Int32
	type result struct {
		c   *Cert
		err error
	}
	done := make(chan result, 1)
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		c, err := s.issueCert(o, csr)
		unlock := s.lock(o.ID)
		defer unlock()
		if state.CompareAndSwap(0, 1) {
			done <- result{c, err}
			return
		}
		defer s.finalizing.Delete(o.ID)
		if err == nil {
			err = s.finishLocked(o, c)
		}
		if err != nil {
			s.failLocked(o, err)
		}
	}()
	t := time.NewTimer(max(s.cfg.FinalizeWait, 0))
	defer t.Stop()
	var res result
	select {
	case res = <-done:
		defer s.lock(o.ID)()
	case <-t.C:
		defer s.lock(o.ID)()
		if state.CompareAndSwap(0, 2) {
			o.Status = StatusProcessing
			if err := s.st.UpdateOrder(ctx, o, WorkFinalize+o.ID, true); err != nil {
				// The background attempt still settles the order.
				return s.internalErr("update order", err)
			}
			retryAfter(w, s.cfg.RetryAfter)
			return s.writeJSON(w, http.StatusOK, s.url(pOrder+o.ID), s.orderJSON(o, StatusProcessing))
		}
		res = <-done
	}
	defer s.finalizing.Delete(o.ID)
	if res.err == nil {
		res.err = s.finishLocked(o, res.c)
	}
	if res.err != nil {
		p := toProblem(res.err)
		if p.Status == http.StatusServiceUnavailable {
			return p // the order stays ready
		}
		s.failLocked(o, res.err)
		return p
	}
	return s.writeJSON(w, http.StatusOK, s.url(pOrder+o.ID), s.orderJSON(o, StatusValid))
}

// checkCSR checks the CSR against the order (RFC 8555 §7.4): valid
// signature, exactly the order's identifiers, no other SAN types, a key
// that is not the account key. It returns the parsed, checked CSR.
func (s *Server) checkCSR(q *request, o *Order, der []byte) (*x509.CertificateRequest, *Problem) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, prob(ProbBadCSR, 400, "CSR does not parse")
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, prob(ProbBadCSR, 400, "CSR signature does not verify")
	}
	if len(csr.EmailAddresses) > 0 || len(csr.URIs) > 0 {
		return nil, prob(ProbBadCSR, 400, "CSR may only name DNS names and IP addresses")
	}
	want := map[Identifier]bool{}
	for _, id := range o.Identifiers {
		want[id] = true
	}
	got := map[Identifier]bool{}
	for _, n := range csr.DNSNames {
		got[Identifier{Type: "dns", Value: strings.ToLower(n)}] = true
	}
	for _, ip := range csr.IPAddresses {
		a, _ := netip.AddrFromSlice(ip)
		got[Identifier{Type: "ip", Value: a.Unmap().String()}] = true
	}
	if cn := csr.Subject.CommonName; cn != "" {
		id := Identifier{Type: "dns", Value: strings.ToLower(cn)}
		if ip := net.ParseIP(cn); ip != nil {
			a, _ := netip.AddrFromSlice(ip)
			id = Identifier{Type: "ip", Value: a.Unmap().String()}
		}
		if !want[id] {
			return nil, prob(ProbBadCSR, 400, "CSR common name is not one of the order's identifiers")
		}
		got[id] = true
	}
	if len(got) != len(want) {
		return nil, prob(ProbBadCSR, 400, "CSR names differ from the order's identifiers")
	}
	for id := range got {
		if !want[id] {
			return nil, prob(ProbBadCSR, 400, "CSR names differ from the order's identifiers")
		}
	}
	if eq, ok := q.key.Key.(interface{ Equal(crypto.PublicKey) bool }); ok && eq.Equal(csr.PublicKey) { // q.key: finalize is signed with kid
		return nil, prob(ProbBadCSR, 400, "the certificate key must not be the account key")
	}
	return csr, nil
}

// issueCert asks the CA to sign the order's CSR. csr, if not nil, is o.CSR
// parsed, with its signature checked (by checkCSR).
func (s *Server) issueCert(o *Order, csr *x509.CertificateRequest) (*Cert, error) {
	select {
	case s.issueCh <- struct{}{}:
	case <-s.ctx.Done():
		return nil, s.ctx.Err()
	}
	defer func() { <-s.issueCh }()
	ctx, cancel := context.WithTimeout(s.ctx, time.Minute)
	defer cancel()
	iss, err := s.ca.Issue(ctx, IssueRequest{CSR: o.CSR, ParsedCSR: csr, Profile: o.Profile, Identifiers: o.Identifiers,
		NotBefore: o.NotBefore, NotAfter: o.NotAfter})
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(iss.DER)
	if err != nil {
		return nil, errors.New("acme: CA returned a certificate that does not parse")
	}
	return &Cert{Serial: serialHex(leaf), CASerial: iss.Serial, AccountID: o.AccountID, OrderID: o.ID,
		DER: iss.DER, Chain: iss.Chain, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter}, nil
}

// finishLocked stores the certificate with the now valid order (one
// transaction) and marks the certificate it replaces. The caller holds
// the order's lock.
func (s *Server) finishLocked(o *Order, c *Cert) error {
	o.Status, o.CertSerial, o.CSR, o.Error = StatusValid, c.Serial, nil, nil
	if err := s.st.FinishOrder(s.ctx, o, c); err != nil {
		return err
	}
	if o.Replaces != "" {
		s.markReplaced(o.Replaces)
	}
	return nil
}

// markReplaced marks the certificate certID names as replaced. It reads
// and writes the record under the certificate's lock, as handleRevoke
// does, so that neither write undoes the other.
func (s *Server) markReplaced(certID string) {
	_, serial, p := parseCertID(certID)
	if p != nil {
		return
	}
	defer s.lock("c" + serial)()
	old, p := s.certByARIID(s.ctx, certID)
	if p != nil || old.Replaced {
		return
	}
	old.Replaced = true
	if err := s.st.UpdateCert(s.ctx, old); err != nil {
		s.log.Error("acme: mark replaced certificate", "err", err)
	}
}

// failLocked makes the order invalid with the problem err maps to; the
// caller holds the order's lock.
func (s *Server) failLocked(o *Order, err error) {
	p := toProblem(err)
	if p.Type == ProbServerInternal {
		s.log.Error("acme: issuance failed", "order", o.ID, "err", err)
	}
	e := *p
	e.retryAfter = 0
	o.Status, o.CSR, o.Error = StatusInvalid, nil, &e
	if err := s.st.UpdateOrder(s.ctx, o, WorkFinalize+o.ID, false); err != nil {
		s.log.Error("acme: store failed order", "order", o.ID, "err", err)
	}
}

func serialHex(c *x509.Certificate) string { return c.SerialNumber.Text(16) }

// handleCert serves the certificate chain (RFC 8555 §7.4.2).
func (s *Server) handleCert(w http.ResponseWriter, q *request) *Problem {
	if !q.postAsGet() {
		return malformed("a certificate is downloaded with POST-as-GET")
	}
	c, err := s.st.GetCert(q.r.Context(), q.r.PathValue("serial"))
	if err != nil {
		return s.internalErr("get certificate", err)
	}
	if c.AccountID != q.acct.ID {
		return unauthorized("this certificate belongs to another account")
	}
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.DER})
	for _, d := range c.Chain {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d})...)
	}
	h := w.Header()
	h.Set("Content-Type", "application/pem-certificate-chain")
	if len(c.Chain) > 0 {
		h.Add("Link", `<`+s.url(pCert+c.Serial+"/issuer")+`>;rel="up"`)
	}
	w.WriteHeader(http.StatusOK)
	w.Write(b)
	return nil
}

// handleIssuer serves the issuer of a certificate (the Link rel="up"
// target), DER, without authentication: issuer certificates are public.
func (s *Server) handleIssuer(w http.ResponseWriter, r *http.Request) {
	c, err := s.st.GetCert(r.Context(), r.PathValue("serial"))
	if err != nil || len(c.Chain) == 0 {
		s.writeProblem(w, notFound())
		return
	}
	w.Header().Set("Content-Type", "application/pkix-cert")
	w.Write(c.Chain[0])
}
