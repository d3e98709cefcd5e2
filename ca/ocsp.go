package ca

import (
	"bytes"
	"context"
	"crypto"
	_ "crypto/sha1" // OCSP CertIDs mostly use SHA-1 (RFC 6960 §4.1.1)
	_ "crypto/sha256"
	_ "crypto/sha512"
	"encoding/asn1"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/crypto/ocsp"
)

// OCSP errors, for the HTTP layer to map to RFC 6960 §2.3 statuses.
var (
	// ErrOCSPMalformed: the request does not parse (malformedRequest).
	ErrOCSPMalformed = errors.New("ca: malformed OCSP request")
	// ErrOCSPUnknownIssuer: the CertID names no issuer of this CA
	// (unauthorized).
	ErrOCSPUnknownIssuer = errors.New("ca: OCSP request for an issuer this CA does not serve")
)

// ocspCacheMax bounds the number of cached responses; when full the cache
// is emptied (responses are cheap to remake, memory is not free).
const ocspCacheMax = 200_000

// ocspForgetMax bounds the number of serials whose latest forget the cache
// remembers (see ocspCache.forgotAt).
const ocspForgetMax = 10_000

type ocspEntry struct {
	der     []byte
	refresh time.Time // make a new response after this
}

// ocspCache holds signed OCSP responses. A response is cached only if its
// serial's status did not change (forget) between the store read it was
// made from and its put: otherwise a "good" made just before a revocation
// could be cached after the revocation's forget, and be served for half
// of OCSP.Validity. Changes of other serials do not matter, so that steady
// revocations elsewhere do not leave every answer uncached (and every
// request costing an HSM signature).
type ocspCache struct {
	mu sync.Mutex
	m  map[string]ocspEntry
	// forgets counts forget calls; begin hands out its value as a token.
	forgets uint64
	// forgotAt maps issuer/serial to the value of forgets right after
	// that serial's latest forget. It holds at most ocspForgetMax
	// serials, and is emptied with the cache.
	forgotAt map[string]uint64
	// floor is forgets when forgotAt was last emptied: a put whose token
	// is below it may have lost the record of its serial's forget, so
	// it is left uncached.
	floor uint64
}

func (oc *ocspCache) init() {
	oc.m = map[string]ocspEntry{}
	oc.forgotAt = map[string]uint64{}
}

func (oc *ocspCache) get(key string, now time.Time) ([]byte, bool) {
	oc.mu.Lock()
	defer oc.mu.Unlock()
	e, ok := oc.m[key]
	if !ok || !now.Before(e.refresh) {
		return nil, false
	}
	return e.der, true
}

// begin returns the token to pass to put for a response made from a store
// read that starts after this call.
func (oc *ocspCache) begin() uint64 {
	oc.mu.Lock()
	defer oc.mu.Unlock()
	return oc.forgets
}

// put caches e under key, the response for serial of issuer, unless that
// serial's status changed (forget) since begin returned token; the
// response is then left uncached, as it may be stale.
func (oc *ocspCache) put(issuer, serial, key string, e ocspEntry, token uint64) {
	oc.mu.Lock()
	defer oc.mu.Unlock()
	if token < oc.floor {
		return
	}
	if at, ok := oc.forgotAt[issuer+"/"+serial]; ok && at > token {
		return
	}
	if len(oc.m) >= ocspCacheMax {
		oc.m = map[string]ocspEntry{}
		oc.resetForgotten()
	}
	oc.m[key] = e
}

func (oc *ocspCache) forget(issuer, serial string) {
	oc.mu.Lock()
	defer oc.mu.Unlock()
	oc.forgets++
	if len(oc.forgotAt) >= ocspForgetMax {
		oc.resetForgotten()
	}
	oc.forgotAt[issuer+"/"+serial] = oc.forgets
	for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256, crypto.SHA384, crypto.SHA512} {
		delete(oc.m, ocspKey(issuer, serial, h))
	}
}

// resetForgotten empties forgotAt; every put begun before is then
// refused. oc.mu is held.
func (oc *ocspCache) resetForgotten() {
	oc.forgotAt = map[string]uint64{}
	oc.floor = oc.forgets
}

func ocspKey(issuer, serial string, h crypto.Hash) string {
	return fmt.Sprintf("%s/%s/%d", issuer, serial, h)
}

// ParseOCSPRequest parses a DER OCSP request (RFC 6960 §4.1; one CertID,
// unsigned). Errors wrap ErrOCSPMalformed.
func ParseOCSPRequest(der []byte) (*ocsp.Request, error) {
	if len(der) == 0 || len(der) > 10_000 {
		return nil, fmt.Errorf("%w: size %d", ErrOCSPMalformed, len(der))
	}
	req, err := ocsp.ParseRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrOCSPMalformed, err)
	}
	if req.SerialNumber == nil || len(req.IssuerKeyHash) == 0 || len(req.IssuerNameHash) == 0 {
		return nil, fmt.Errorf("%w: incomplete CertID", ErrOCSPMalformed)
	}
	return req, nil
}

// issuerForOCSP finds the issuer whose name and key hashes the request
// carries.
func (c *CA) issuerForOCSP(req *ocsp.Request) (*issuerState, error) {
	for _, name := range c.issuerOrder {
		st := c.issuers[name]
		var spki struct {
			Algorithm asn1.RawValue
			PublicKey asn1.BitString
		}
		if _, err := asn1.Unmarshal(st.Cert.RawSubjectPublicKeyInfo, &spki); err != nil {
			continue
		}
		h := req.HashAlgorithm.New()
		h.Write(spki.PublicKey.RightAlign())
		if !bytes.Equal(h.Sum(nil), req.IssuerKeyHash) {
			continue
		}
		h.Reset()
		h.Write(st.Cert.RawSubject)
		if bytes.Equal(h.Sum(nil), req.IssuerNameHash) {
			return st, nil
		}
	}
	return nil, ErrOCSPUnknownIssuer
}

// OCSPResponse answers a DER OCSP request (RFC 6960) with a response signed
// by the issuer key (or its delegated responder, Options.OCSPResponders): good for valid and pending serials (a pending serial
// may carry a real signature), revoked with time and reason. A serial this
// issuer never recorded (or whose copy the lints refused) gets the
// unsigned "unauthorized" error response, which costs no signature.
// Signed good and revoked responses
// are cached for half of OCSP.Validity, and forgotten on revocation, so
// repeated requests do not reach the HSM. Errors: ErrOCSPMalformed,
// ErrOCSPUnknownIssuer, ErrSealed (wrapped).
func (c *CA) OCSPResponse(ctx context.Context, requestDER []byte) ([]byte, error) {
	req, err := ParseOCSPRequest(requestDER)
	if err != nil {
		return nil, err
	}
	if !req.HashAlgorithm.Available() {
		return nil, fmt.Errorf("%w: hash algorithm not available", ErrOCSPMalformed)
	}
	iss, err := c.issuerForOCSP(req)
	if err != nil {
		return nil, err
	}
	now := c.clock().UTC()
	validity := c.cfg.OCSP.Validity.D()
	if validity == 0 {
		validity = 24 * time.Hour
	}
	tmpl := ocsp.Response{
		SerialNumber: req.SerialNumber,
		IssuerHash:   req.HashAlgorithm,
		ThisUpdate:   now.Truncate(time.Minute),
		NextUpdate:   now.Truncate(time.Minute).Add(validity),
		Status:       ocsp.Unknown,
	}
	var serial string
	var token uint64
	if req.SerialNumber.Sign() > 0 {
		serial = SerialString(req.SerialNumber)
		if der, ok := c.ocsp.get(ocspKey(iss.Name, serial, req.HashAlgorithm), now); ok {
			return der, nil
		}
		token = c.ocsp.begin()
		rec, err := c.store.CertBySerial(ctx, serial)
		switch {
		case err == nil && rec.Issuer == iss.Name && rec.Status != StatusRefused:
			if rec.Status == StatusRevoked {
				tmpl.Status = ocsp.Revoked
				tmpl.RevokedAt = rec.RevokedAt
				tmpl.RevocationReason = rec.Reason
			} else {
				tmpl.Status = ocsp.Good
			}
		case err == nil, errors.Is(err, ErrUnknownSerial):
		default:
			return nil, fmt.Errorf("ca: ocsp: store: %w", err)
		}
	}
	if tmpl.Status == ocsp.Unknown {
		// A serial this issuer never signed (not recorded, refused, or
		// another issuer's) gets the unsigned "unauthorized" answer
		// (RFC 6960 §2.3; RFC 5019 §2.2.3): a signed "unknown" would let
		// anyone on the network draw an HSM signature, and an audit
		// record, per request for random serials.
		return ocsp.UnauthorizedErrorResponse, nil
	}
	if iss.delegated {
		// RFC 6960 §4.2.2.2: the client needs the responder certificate
		// to check the delegation.
		tmpl.Certificate = iss.ocspCert
	}
	der, err := ocsp.CreateResponse(iss.Cert, iss.ocspCert, tmpl, iss.ocspSigner)
	if err != nil {
		return nil, wrapSign("ocsp", err)
	}
	c.ocsp.put(iss.Name, serial, ocspKey(iss.Name, serial, req.HashAlgorithm), ocspEntry{der: der, refresh: now.Add(validity / 2)}, token)
	return der, nil
}
