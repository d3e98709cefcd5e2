package cli

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/hsmca/hsmca/acme"
	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/server"
)

// acmeCA adapts the CA core to what the ACME server needs (acme.CA): acme
// and ca never import each other. Domain errors become the ACME ones:
// ca.ErrSealed → *acme.UnavailableError ("CA awaits quorum (k of M)", 503
// with Retry-After), *ca.ErrPolicy → *acme.RejectedError, *ca.ErrBadCSR and
// lint failures → *acme.BadCSRError.
type acmeCA struct {
	cur        *atomic.Pointer[ca.CA] // swapped on SIGHUP
	quorum     server.Quorum
	metrics    *server.Metrics
	retryAfter time.Duration
	// revoked is told about every revocation (OCSP fallback, CRL kick).
	revoked func(serial string)
	// activeUntil (Unix ns) skips the quorum probe before an issuance for
	// a short while after it last found the partition active: the soft
	// module's Status counts the partition's keys in its database, which
	// cost about 2% of the CPU of an ACME order. A seal within that window
	// is still honoured: the HSM signer refuses with ErrSealed, which maps
	// to the same 503; the probe only saves linting and a serial record
	// while sealed.
	activeUntil atomic.Int64
}

// activeProbeTTL is how long a probe that found the partition active is
// trusted for skipping the next ones.
const activeProbeTTL = time.Second

var _ acme.CA = (*acmeCA)(nil)

func (a *acmeCA) unavailable() error {
	q, _ := a.quorum.Status()
	return &acme.UnavailableError{Detail: server.SealedDetail(q), RetryAfter: a.retryAfter}
}

// Issue signs an ACME order's CSR. A sealed partition is refused before
// anything is linted or recorded.
func (a *acmeCA) Issue(ctx context.Context, req acme.IssueRequest) (*acme.Issued, error) {
	if now := time.Now().UnixNano(); now >= a.activeUntil.Load() {
		q, err := a.quorum.Status()
		if err == nil && !q.Active() {
			a.metrics.ObserveIssuance("acme", 0, ca.ErrSealed)
			return nil, a.unavailable()
		}
		if err == nil {
			a.activeUntil.Store(now + int64(activeProbeTTL))
		}
	}
	profile := req.Profile
	if profile == "" {
		profile = defaultACMEProfile
	}
	names := make([]string, 0, len(req.Identifiers))
	for _, id := range req.Identifiers {
		names = append(names, id.Value)
	}
	start := time.Now()
	creq := ca.IssueRequest{
		CSR: req.CSR, Profile: profile, NotBefore: req.NotBefore, NotAfter: req.NotAfter, Names: names,
	}
	var cert *ca.Certificate
	var err error
	if req.ParsedCSR != nil {
		// The ACME server checked the CSR's signature at finalize.
		creq.ParsedCSR = req.ParsedCSR
		cert, err = a.cur.Load().IssueVerified(ctx, creq)
	} else {
		cert, err = a.cur.Load().Issue(ctx, creq)
	}
	a.metrics.ObserveIssuance("acme", time.Since(start), err)
	if errors.Is(err, ca.ErrSealed) {
		a.activeUntil.Store(0)
	}
	if err != nil {
		return nil, a.mapErr(err, req.Identifiers)
	}
	return &acme.Issued{Serial: cert.Serial, DER: cert.DER, Chain: withoutRoot(cert.Chain)}, nil
}

// withoutRoot drops a self-issued certificate at the end of the chain:
// ACME hands out the chain up to, not including, the root.
func withoutRoot(chain [][]byte) [][]byte {
	if len(chain) < 2 {
		return chain
	}
	c, perr := x509.ParseCertificate(chain[len(chain)-1])
	if perr == nil && bytes.Equal(c.RawSubject, c.RawIssuer) {
		return chain[:len(chain)-1]
	}
	return chain
}

// CheckNames applies the name policy before an order is created. The CA
// reports only the first name it refuses; the ACME server then asks again
// about each identifier alone, to list every refused one.
func (a *acmeCA) CheckNames(profile string, ids []acme.Identifier) error {
	if profile == "" {
		profile = defaultACMEProfile
	}
	var dns []string
	var ips []net.IP
	for _, id := range ids {
		if id.Type == "ip" {
			ips = append(ips, net.ParseIP(id.Value))
		} else {
			dns = append(dns, id.Value)
		}
	}
	if err := a.cur.Load().CheckNames(profile, dns, ips); err != nil {
		return a.mapErr(err, ids)
	}
	return nil
}

// Revoke revokes a certificate on behalf of an ACME client.
func (a *acmeCA) Revoke(ctx context.Context, serial string, reason int) error {
	c, err := a.cur.Load().Revoke(ctx, serial, reason)
	if err != nil {
		if errors.Is(err, ca.ErrAlreadyRevoked) {
			return &acme.Problem{Type: acme.ProbAlreadyRevoked, Status: http.StatusBadRequest, Detail: "certificate is already revoked"}
		}
		return a.mapErr(err, nil)
	}
	if a.revoked != nil {
		a.revoked(c.Serial)
	}
	return nil
}

func (a *acmeCA) mapErr(err error, ids []acme.Identifier) error {
	var (
		policy *ca.ErrPolicy
		bad    *ca.ErrBadCSR
		lint   *ca.ErrLint
	)
	switch {
	case errors.Is(err, ca.ErrSealed):
		return a.unavailable()
	case errors.As(err, &policy):
		id := acme.Identifier{Type: "dns", Value: policy.Name}
		for _, i := range ids {
			if i.Value == policy.Name {
				id = i
			}
		}
		if net.ParseIP(policy.Name) != nil {
			id.Type = "ip"
		}
		return &acme.RejectedError{Identifier: id, Reason: policy.Reason}
	case errors.As(err, &bad):
		return &acme.BadCSRError{Reason: bad.Error()}
	case errors.As(err, &lint):
		return &acme.BadCSRError{Reason: "the certificate would fail the CA's lint checks: " + lint.Error()}
	case errors.Is(err, ca.ErrUnknownProfile), errors.Is(err, ca.ErrBadRequest):
		return &acme.BadCSRError{Reason: err.Error()}
	case errors.Is(err, ca.ErrUnknownSerial):
		return acme.ErrNotFound
	}
	return err
}

// defaultACMEProfile is the CA profile used for ACME orders that name none.
const defaultACMEProfile = "server"
