package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/crypto/ocsp"

	"github.com/hsmca/hsmca/ca"
)

// routeName labels a request for metrics: the ServeMux pattern that served
// it, or "unmatched".
func routeName(r *http.Request) string {
	if r.Pattern == "" {
		return "unmatched"
	}
	return r.Pattern
}

// publicRoutes registers CRL, AIA, /healthz and /metrics on mux. OCSP is
// not a mux route: publicFirst sends requests to it before the mux cleans
// their path.
func (s *Server) publicRoutes(mux *http.ServeMux) {
	if s.cfg.CRLPath == s.cfg.AIAPath {
		// One directory for both (ca.urls with the same base): the file's
		// extension picks the endpoint.
		mux.HandleFunc("GET "+s.cfg.CRLPath+"/{file}", func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.PathValue("file"), ".crt") {
				s.handleAIA(w, r)
				return
			}
			s.handleCRL(w, r)
		})
	} else {
		mux.HandleFunc("GET "+s.cfg.CRLPath+"/{file}", s.handleCRL)
		mux.HandleFunc("GET "+s.cfg.AIAPath+"/{file}", s.handleAIA)
	}
	mux.HandleFunc("GET /healthz", s.handleHealth)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.d.Gatherer, promhttp.HandlerOpts{}))
}

// publicFirst serves OCSP requests itself and passes the rest to mux. It
// looks at the path as sent: an OCSP GET request is base64 in the path
// (RFC 6960 appendix A.1), where "//" is common, and the mux would answer
// such a path with a redirect to its cleaned form, a different request.
func (s *Server) publicFirst(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.isOCSP(r) {
			// The route label of the metrics.
			r.Pattern = s.ocspRoute(r)
			s.handleOCSP(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// isOCSP reports whether r is for the OCSP responder: its path is the OCSP
// path or below it, and is not one of the fixed routes or a CRL or AIA
// file (base64 never holds the '.' of NAME.crl or NAME.crt), which take
// precedence when OCSP shares their path or sits at the root.
func (s *Server) isOCSP(r *http.Request) bool {
	p := r.URL.EscapedPath()
	if !strings.HasPrefix(p, "/") {
		return false
	}
	if s.cfg.OCSPPath != "" && !under(p, s.cfg.OCSPPath) {
		return false
	}
	rest := strings.TrimPrefix(p, s.cfg.OCSPPath)
	if strings.Contains(rest, ".") {
		return false
	}
	for _, f := range []string{"/healthz", "/metrics", "/admin", strings.TrimRight(s.cfg.ACMEPrefix, "/")} {
		if f != "" && under(p, f) {
			return false
		}
	}
	return true
}

// ocspRoute is the metrics route label of an OCSP request: the OCSP path
// itself, or the tree below it.
func (s *Server) ocspRoute(r *http.Request) string {
	if r.URL.EscapedPath() == s.cfg.OCSPPath {
		return s.cfg.OCSPPath
	}
	return s.cfg.OCSPPath + "/"
}

func notFound(w http.ResponseWriter, r *http.Request) {
	writeProblem(w, problemf(http.StatusNotFound, ProbNotFound, "no such resource: %s", r.URL.Path))
}

// publicHandler serves the plain-HTTP listener.
func (s *Server) publicHandler() http.Handler {
	mux := http.NewServeMux()
	s.publicRoutes(mux)
	return s.publicFirst(mux)
}

// httpsHandler serves ACME, the admin API (mutual TLS) and the public
// endpoints.
func (s *Server) httpsHandler() http.Handler {
	mux := http.NewServeMux()
	s.publicRoutes(mux)
	if s.d.ACME != nil {
		mux.Handle(s.cfg.ACMEPrefix, s.d.ACME)
	}
	mux.Handle("/admin/", s.requireOperator(s.adminHandler()))
	return s.publicFirst(mux)
}

// ---- /healthz ----

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	h := Health{Status: "serving", Store: "ok"}
	q, err := s.quorumStatus()
	if err != nil {
		s.log.Error("server: healthz: quorum status", "err", err)
	}
	h.Quorum = q
	h.Sealed = !q.Active()
	code := http.StatusOK
	if err := s.d.Store.Ping(); err != nil {
		s.log.Error("server: healthz: store", "err", err)
		h.Status, h.Store, code = "degraded", "error", http.StatusServiceUnavailable
	}
	writeJSON(w, code, h)
}

// ---- CRLs ----

// crlMeta caches the nextUpdate and ETag of the last CRL served per
// issuer, so that a large CRL is parsed once per new CRL, not once per
// request.
type crlMeta struct {
	mu sync.Mutex
	m  map[string]crlTimes
}

type crlTimes struct {
	der  []byte
	next time.Time
	etag string
}

func (c *crlMeta) times(issuer string, der []byte) (crlTimes, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.m[issuer]; ok && bytes.Equal(t.der, der) {
		return t, nil
	}
	rl, err := x509.ParseRevocationList(der)
	if err != nil {
		return crlTimes{}, err
	}
	t := crlTimes{der: der, next: rl.NextUpdate}
	// Every CRL of an issuer has a new CRL number (RFC 5280 §5.2.3); a
	// file without one is named by its digest.
	if rl.Number != nil {
		t.etag = `"` + rl.Number.String() + `"`
	} else {
		sum := sha256.Sum256(der)
		t.etag = `"` + hex.EncodeToString(sum[:16]) + `"`
	}
	if c.m == nil {
		c.m = map[string]crlTimes{}
	}
	c.m[issuer] = t
	return t, nil
}

// handleCRL serves <CRLPath>/<issuer>.crl: the latest CRL the CA signed,
// DER (RFC 5280 §4.2.1.13), cacheable until its nextUpdate.
func (s *Server) handleCRL(w http.ResponseWriter, r *http.Request) {
	name, ok := strings.CutSuffix(r.PathValue("file"), ".crl")
	if !ok || name == "" {
		notFound(w, r)
		return
	}
	var der []byte
	c := s.CA()
	if _, err := c.Issuer(name); err == nil {
		der, err = c.LatestCRL(r.Context(), name)
		if err != nil {
			if errors.Is(err, ca.ErrNoCRL) {
				writeProblem(w, problemf(http.StatusNotFound, ProbNotFound, "no CRL for %s has been signed yet", name))
				return
			}
			writeProblem(w, s.caProblem(r, err))
			return
		}
	} else if path, ok := s.cfg.CRLFiles[name]; ok {
		if der, err = readDERFile(path, "X509 CRL"); err != nil {
			s.log.Error("server: CRL file", "issuer", name, "err", err)
			writeProblem(w, problemf(http.StatusNotFound, ProbNotFound, "CRL for %s is not available", name))
			return
		}
	} else {
		notFound(w, r)
		return
	}
	t, err := s.crls.times(name, der)
	if err != nil {
		s.log.Error("server: stored CRL does not parse", "issuer", name, "err", err)
		writeProblem(w, problemf(http.StatusInternalServerError, ProbInternal, "internal error; see the server log"))
		return
	}
	w.Header().Set("Content-Type", "application/pkix-crl")
	// Revalidation goes by the ETag alone. thisUpdate is no Last-Modified:
	// two CRLs can share it (to the second), and a client or cache that
	// asks If-Modified-Since would be told 304 for the newer one, the one
	// that takes a certificate off hold, say.
	setCacheHeaders(w, s.now(), time.Time{}, t.next)
	w.Header().Set("ETag", t.etag)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(der))
}

// setCacheHeaders lets caches keep a CRL or OCSP response until its
// nextUpdate (RFC 5019 §6.2); a non-zero this becomes Last-Modified.
func setCacheHeaders(w http.ResponseWriter, now, this, next time.Time) {
	h := w.Header()
	if !next.IsZero() {
		age := int(next.Sub(now) / time.Second)
		if age < 0 {
			age = 0
		}
		h.Set("Cache-Control", "public, no-transform, must-revalidate, max-age="+strconv.Itoa(age))
		h.Set("Expires", next.UTC().Format(http.TimeFormat))
	} else {
		h.Set("Cache-Control", "no-cache")
	}
	if !this.IsZero() {
		h.Set("Last-Modified", this.UTC().Format(http.TimeFormat))
	}
}

// readDERFile reads a PEM (of block type typ) or DER file.
func readDERFile(path, typ string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != typ {
			return nil, fmt.Errorf("server: %s: PEM block %q, want %q", path, blk.Type, typ)
		}
		return blk.Bytes, nil
	}
	return b, nil
}

// ---- AIA ----

// handleAIA serves <AIAPath>/<issuer>.crt: the issuer certificate, DER
// (RFC 5280 §4.2.2.1 caIssuers).
func (s *Server) handleAIA(w http.ResponseWriter, r *http.Request) {
	name, ok := strings.CutSuffix(r.PathValue("file"), ".crt")
	if !ok || name == "" {
		notFound(w, r)
		return
	}
	var der []byte
	if iss, err := s.CA().Issuer(name); err == nil {
		der = iss.Cert.Raw
	} else if path, ok := s.cfg.IssuerFiles[name]; ok {
		if der, err = readDERFile(path, "CERTIFICATE"); err != nil {
			s.log.Error("server: issuer file", "issuer", name, "err", err)
			notFound(w, r)
			return
		}
	} else {
		notFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/pkix-cert")
	w.Header().Set("Cache-Control", "public, max-age=86400")
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(der))
}

// ---- OCSP ----

const ocspContentType = "application/ocsp-response"

// handleOCSP answers RFC 6960 requests: POST to <OCSPPath> with
// application/ocsp-request, or GET <OCSPPath>/<URL-encoded base64 of the
// DER request> (appendix A.1, RFC 5019 §5); <OCSPPath> is "/" when the
// OCSP URL has no path.
// Malformed requests get the malformedRequest status (HTTP 400); CertIDs of
// foreign issuers unauthorized; while sealed, a response signed earlier is
// served until its nextUpdate, else tryLater (HTTP 503).
func (s *Server) handleOCSP(w http.ResponseWriter, r *http.Request) {
	var reqDER []byte
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		// The path as sent, not cleaned; base64 of DER starts with "M", so
		// the slashes before it (one, or two after a URL that ends in
		// "/") are not part of it.
		enc := strings.TrimPrefix(r.URL.EscapedPath(), s.cfg.OCSPPath)
		enc = strings.TrimLeft(enc, "/")
		if enc == "" {
			s.writeOCSPError(w, http.StatusBadRequest, ocsp.MalformedRequestErrorResponse)
			return
		}
		var err error
		if reqDER, err = decodeOCSPPath(enc); err != nil {
			s.writeOCSPError(w, http.StatusBadRequest, ocsp.MalformedRequestErrorResponse)
			return
		}
	case http.MethodPost:
		if p := r.URL.EscapedPath(); p != s.cfg.OCSPPath && p != s.cfg.OCSPPath+"/" {
			notFound(w, r)
			return
		}
		if ct := r.Header.Get("Content-Type"); ct != "application/ocsp-request" {
			writeProblem(w, problemf(http.StatusUnsupportedMediaType, ProbMalformed, "OCSP POST needs Content-Type application/ocsp-request"))
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				writeProblem(w, problemf(http.StatusRequestEntityTooLarge, ProbTooLarge, "OCSP request larger than %d bytes", mbe.Limit))
				return
			}
			writeProblem(w, problemf(http.StatusBadRequest, ProbMalformed, "reading the request failed"))
			return
		}
		reqDER = body
	default:
		w.Header().Set("Allow", "GET, HEAD, POST")
		writeProblem(w, problemf(http.StatusMethodNotAllowed, ProbMethod, "OCSP takes GET or POST"))
		return
	}
	der, t, status, err := s.ocspResponse(r.Context(), reqDER)
	if err != nil {
		s.writeOCSPError(w, status, der)
		return
	}
	w.Header().Set("Content-Type", ocspContentType)
	if !t.next.IsZero() {
		setCacheHeaders(w, s.now(), t.this, t.next)
	} else {
		w.Header().Set("Cache-Control", "no-cache")
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(der)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(der)
	}
}

func (s *Server) writeOCSPError(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", ocspContentType)
	w.Header().Set("Cache-Control", "no-store")
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", strconv.Itoa(int(s.retryAfter/time.Second)))
	}
	w.WriteHeader(status)
	w.Write(body)
}

// decodeOCSPPath decodes the base64 path element of a GET request. RFC 5019
// says standard base64, URL-encoded; clients differ on padding and on the
// URL-safe alphabet, so all are accepted.
func decodeOCSPPath(enc string) ([]byte, error) {
	if len(enc) > 16<<10 {
		return nil, errors.New("server: OCSP GET path too long")
	}
	un, err := url.PathUnescape(enc)
	if err != nil {
		return nil, err
	}
	un = strings.TrimSpace(un)
	for _, e := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := e.DecodeString(un); err == nil {
			return b, nil
		}
	}
	return nil, errors.New("server: OCSP GET path is not base64")
}

// ocspResponse returns the DER response for a request with its update
// times (zero for unknown-status answers), or an error with the HTTP status
// and the RFC 6960 error response to send.
func (s *Server) ocspResponse(ctx context.Context, reqDER []byte) ([]byte, ocspLastEntry, int, error) {
	c := s.CA()
	der, err := c.OCSPResponse(ctx, reqDER)
	switch {
	case err == nil:
		return der, s.ocspLast.remember(reqDER, der), http.StatusOK, nil
	case errors.Is(err, ca.ErrOCSPMalformed):
		return ocsp.MalformedRequestErrorResponse, ocspLastEntry{}, http.StatusBadRequest, err
	case errors.Is(err, ca.ErrOCSPUnknownIssuer):
		return ocsp.UnauthorizedErrorResponse, ocspLastEntry{}, http.StatusOK, err
	case errors.Is(err, ca.ErrSealed):
		if e, ok := s.ocspLast.lookup(ctx, c, reqDER, s.now()); ok {
			return e.der, e, http.StatusOK, nil
		}
		return ocsp.TryLaterErrorResponse, ocspLastEntry{}, http.StatusServiceUnavailable, err
	}
	s.log.Error("server: OCSP failed", "err", err)
	return ocsp.InternalErrorErrorResponse, ocspLastEntry{}, http.StatusInternalServerError, err
}

// ocspFallback keeps the last signed response per CertID so that a sealed
// CA keeps answering with what it signed last, until that response's
// nextUpdate. A cached "good" is not served once the record is revoked.
type ocspFallback struct {
	mu sync.Mutex
	m  map[string]ocspLastEntry // by CertID
	// byReq indexes the same entries by the request's bytes, so that the
	// common case (a client repeating an identical request) costs no
	// parsing.
	byReq map[string]ocspLastEntry
}

type ocspLastEntry struct {
	der        []byte
	serial     string
	status     int
	this, next time.Time
}

const ocspFallbackMax = 100_000

func newOCSPFallback() *ocspFallback {
	return &ocspFallback{m: map[string]ocspLastEntry{}, byReq: map[string]ocspLastEntry{}}
}

// key identifies a request by its CertID (hash algorithm, issuer hashes,
// serial), ignoring nonces and other extensions.
func ocspReqKey(reqDER []byte) (string, string, bool) {
	req, err := ca.ParseOCSPRequest(reqDER)
	if err != nil {
		return "", "", false
	}
	serial := ca.SerialString(req.SerialNumber)
	return fmt.Sprintf("%d/%x/%x/%s", req.HashAlgorithm, req.IssuerNameHash, req.IssuerKeyHash, serial), serial, true
}

// remember keeps der as the last response for the request's CertID and
// returns its update times. A response seen before is not parsed again.
func (f *ocspFallback) remember(reqDER, der []byte) ocspLastEntry {
	f.mu.Lock()
	if e, ok := f.byReq[string(reqDER)]; ok && bytes.Equal(e.der, der) {
		f.mu.Unlock()
		return e
	}
	f.mu.Unlock()
	key, serial, ok := ocspReqKey(reqDER)
	if !ok {
		return ocspLastEntry{}
	}
	f.mu.Lock()
	if e, ok := f.m[key]; ok && bytes.Equal(e.der, der) {
		f.mu.Unlock()
		return e
	}
	f.mu.Unlock()
	resp, err := ocsp.ParseResponse(der, nil)
	if err != nil {
		return ocspLastEntry{}
	}
	e := ocspLastEntry{der: der, serial: serial, status: resp.Status, this: resp.ThisUpdate, next: resp.NextUpdate}
	if resp.Status == ocsp.Unknown {
		return e
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.m) >= ocspFallbackMax || len(f.byReq) >= ocspFallbackMax {
		f.m, f.byReq = map[string]ocspLastEntry{}, map[string]ocspLastEntry{}
	}
	f.m[key] = e
	f.byReq[string(reqDER)] = e
	return e
}

func (f *ocspFallback) lookup(ctx context.Context, c *ca.CA, reqDER []byte, now time.Time) (ocspLastEntry, bool) {
	key, serial, ok := ocspReqKey(reqDER)
	if !ok {
		return ocspLastEntry{}, false
	}
	f.mu.Lock()
	e, ok := f.m[key]
	f.mu.Unlock()
	if !ok || !now.Before(e.next) {
		return ocspLastEntry{}, false
	}
	if e.status == ocsp.Good {
		rec, err := c.Get(ctx, serial)
		if err != nil || rec.Status == ca.StatusRevoked {
			return ocspLastEntry{}, false
		}
	}
	return e, true
}

func (f *ocspFallback) forget(serial string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, e := range f.m {
		if e.serial == serial {
			delete(f.m, k)
		}
	}
	for k, e := range f.byReq {
		if e.serial == serial {
			delete(f.byReq, k)
		}
	}
}
