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
// and issuance completes in the background (settleOrder). A certificate
// that was signed but could not be stored in the request is handed to the
// background the same way. If the CA is unavailable (sealed) the order
// stays ready and the client gets 503 with Retry-After.
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
		if state.CompareAndSwap(0, 1) {
			done <- result{c, err}
			unlock()
			return
		}
		unlock()
		s.settleOrder(o, c, err)
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
			return s.answerProcessing(w, o)
		}
		res = <-done
	}
	if res.err == nil {
		err := s.finishLocked(o, res.c)
		if err == nil {
			s.finalizing.Delete(o.ID)
			return s.writeJSON(w, http.StatusOK, s.url(pOrder+o.ID), s.orderJSON(o, StatusValid))
		}
		// The certificate exists: the background stores it (retrying)
		// rather than the order failing and the client asking for another.
		s.log.Warn("acme: store issued certificate; retrying in the background", "order", o.ID, "err", err)
		bo := *o
		s.bg.Add(1)
		go func() {
			defer s.bg.Done()
			s.settleOrder(&bo, res.c, nil)
		}()
		return s.answerProcessing(w, o)
	}
	defer s.finalizing.Delete(o.ID)
	p = toProblem(res.err)
	if p.Status == http.StatusServiceUnavailable {
		return p // the order stays ready
	}
	if err := s.failLocked(o, res.err); err != nil {
		// The order stays ready: finalizing it again gets the answer again.
		s.log.Error("acme: store failed order", "order", o.ID, "err", err)
	}
	return p
}

// answerProcessing stores o as processing with a finalize work record and
// answers so, with Retry-After. The caller holds the order's lock and has
// left the outcome to settleOrder, which settles the order even if this
// write fails.
func (s *Server) answerProcessing(w http.ResponseWriter, o *Order) *Problem {
	o.Status = StatusProcessing
	if err := s.st.UpdateOrder(s.ctx, o, WorkFinalize+o.ID, true); err != nil {
		return s.internalErr("update order", err)
	}
	retryAfter(w, s.cfg.RetryAfter)
	return s.writeJSON(w, http.StatusOK, s.url(pOrder+o.ID), s.orderJSON(o, StatusProcessing))
}

// settleOrder stores the outcome of an issuance that the background owns:
// the certificate with the valid order, or, if err is set, the order
// invalid with err's problem. A failed store write is retried with backoff
// (storeRetries times); a certificate that still cannot be stored leaves
// the order invalid with serverInternal (the CA keeps its own record of
// the serial), and only if that cannot be written either does the order
// stay as the store holds it: processing, for the restart recovery, or
// still ready if the processing write failed too. This process then keeps
// it marked as finalizing, so that it is not finalized again here and the
// CA is not asked twice. After a restart an order left ready can be
// finalized again, which issues a second certificate; the first was never
// handed out, and the CA's record of it stays (it can be revoked).
func (s *Server) settleOrder(o *Order, c *Cert, err error) {
	if err == nil {
		if s.retryStore(o.ID, func() error { return s.finishLocked(o, c) }) {
			s.finalizing.Delete(o.ID)
			return
		}
		s.log.Error("acme: issued certificate could not be stored", "order", o.ID, "serial", c.Serial, "ca_serial", c.CASerial)
		err = prob(ProbServerInternal, 500, "the certificate could not be stored; create a new order")
	}
	if !s.retryStore(o.ID, func() error { return s.failLocked(o, err) }) {
		// The store holds the order as processing (or still ready, if the
		// processing write failed too); this process keeps it marked as
		// finalizing, and the restart recovery settles a processing one.
		s.log.Error("acme: failed order could not be stored; it is left as the store holds it until a restart", "order", o.ID)
		return
	}
	s.finalizing.Delete(o.ID)
}

// retryStore runs op under the lock of id until it succeeds, at most
// 1+storeRetries times with a growing pause (unlocked) between tries, and
// reports whether it succeeded. It stops early when the server closes.
func (s *Server) retryStore(id string, op func() error) bool {
	for n := 0; ; n++ {
		unlock := s.lock(id)
		err := op()
		unlock()
		if err == nil {
			return true
		}
		s.log.Warn("acme: store write failed", "id", id, "try", n+1, "err", err)
		if n == storeRetries {
			return false
		}
		t := time.NewTimer(storeBackoff(n))
		select {
		case <-t.C:
		case <-s.ctx.Done():
			t.Stop()
			return false
		}
	}
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
// transaction) and marks the certificate it replaces; o changes only if
// the write succeeded. The caller holds the order's lock.
func (s *Server) finishLocked(o *Order, c *Cert) error {
	v := *o
	v.Status, v.CertSerial, v.CSR, v.Error = StatusValid, c.Serial, nil, nil
	if err := s.st.FinishOrder(s.ctx, &v, c); err != nil {
		// A write that reported an error may still have committed (an
		// error after the commit): then the order is valid with this
		// certificate, and writing it as processing, or retrying, would
		// take it back out of valid.
		cur, gerr := s.st.GetOrder(s.ctx, o.ID)
		if gerr != nil || cur.Status != StatusValid || cur.CertSerial != c.Serial {
			return err
		}
		s.log.Warn("acme: storing the issued certificate reported an error, but it was stored", "order", o.ID, "err", err)
		v = *cur
	}
	*o = v
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
	defer s.lockCert(serial)()
	old, p := s.certByARIID(s.ctx, certID)
	if p != nil || old.Replaced {
		return
	}
	old.Replaced = true
	if err := s.st.UpdateCert(s.ctx, old); err != nil {
		s.log.Error("acme: mark replaced certificate", "err", err)
	}
}

// failLocked makes the order invalid with the problem err maps to and
// clears its finalize work record; an error is a store error. An order the
// store already holds as valid or invalid is left as it is: a FinishOrder
// that reported an error may still have committed, and a valid order
// never becomes invalid (RFC 8555 §7.1.6). The caller holds the order's
// lock.
func (s *Server) failLocked(o *Order, err error) error {
	cur, gerr := s.st.GetOrder(s.ctx, o.ID)
	if errors.Is(gerr, ErrNotFound) {
		return nil // pruned
	} else if gerr != nil {
		return gerr
	}
	if cur.Status == StatusValid || cur.Status == StatusInvalid {
		*o = *cur
		return nil
	}
	p := toProblem(err)
	if p.Type == ProbServerInternal {
		// Logged before the write: once it commits, a client polling the
		// order sees it invalid, and the log should already say why.
		s.log.Error("acme: issuance failed", "order", o.ID, "err", err)
	}
	e := *p
	e.retryAfter = 0
	f := *o
	f.Status, f.CSR, f.CertSerial, f.Error = StatusInvalid, nil, "", &e
	if uerr := s.st.UpdateOrder(s.ctx, &f, WorkFinalize+o.ID, false); errors.Is(uerr, ErrNotFound) {
		return nil
	} else if uerr != nil {
		return uerr
	}
	*o = f
	return nil
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
