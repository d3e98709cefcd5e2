package ca

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// RFC 5280 §5.3.1 CRLReason codes.
const (
	ReasonUnspecified          = 0
	ReasonKeyCompromise        = 1
	ReasonCACompromise         = 2
	ReasonAffiliationChanged   = 3
	ReasonSuperseded           = 4
	ReasonCessationOfOperation = 5
	ReasonCertificateHold      = 6
	ReasonRemoveFromCRL        = 8
	ReasonPrivilegeWithdrawn   = 9
	ReasonAACompromise         = 10
)

var reasonNames = map[int]string{
	ReasonUnspecified:          "unspecified",
	ReasonKeyCompromise:        "keyCompromise",
	ReasonCACompromise:         "cACompromise",
	ReasonAffiliationChanged:   "affiliationChanged",
	ReasonSuperseded:           "superseded",
	ReasonCessationOfOperation: "cessationOfOperation",
	ReasonCertificateHold:      "certificateHold",
	ReasonRemoveFromCRL:        "removeFromCRL",
	ReasonPrivilegeWithdrawn:   "privilegeWithdrawn",
	ReasonAACompromise:         "aACompromise",
}

// ReasonString names an RFC 5280 reason code ("keyCompromise").
func ReasonString(code int) string {
	if s, ok := reasonNames[code]; ok {
		return s
	}
	return "reason(" + strconv.Itoa(code) + ")"
}

// reasonWords spells each reason name as words, for the separated forms
// ParseReason accepts ("key-compromise", "key_compromise").
var reasonWords = map[int][]string{
	ReasonUnspecified:          {"unspecified"},
	ReasonKeyCompromise:        {"key", "compromise"},
	ReasonCACompromise:         {"ca", "compromise"},
	ReasonAffiliationChanged:   {"affiliation", "changed"},
	ReasonSuperseded:           {"superseded"},
	ReasonCessationOfOperation: {"cessation", "of", "operation"},
	ReasonCertificateHold:      {"certificate", "hold"},
	ReasonRemoveFromCRL:        {"remove", "from", "crl"},
	ReasonPrivilegeWithdrawn:   {"privilege", "withdrawn"},
	ReasonAACompromise:         {"aa", "compromise"},
}

// ParseReason accepts an RFC 5280 reason name, case-insensitive, as one
// word ("keyCompromise") or with "-", "_" or a space between its words
// ("key-compromise"), or its decimal number ("1"), and returns the code.
// Anything else is refused, including signs and separators inside a
// number or a word ("-1", "1-0", "k_e_y compromise"): a typo must not
// turn into an irreversible keyCompromise. Only the codes a leaf
// certificate may be revoked with are accepted: cACompromise (2), 7
// (unused) and removeFromCRL (8) are refused.
func ParseReason(s string) (int, error) {
	key := strings.ToLower(strings.TrimSpace(s))
	code := -1
	if key != "" && strings.Trim(key, "0123456789") == "" {
		if n, err := strconv.Atoi(key); err == nil {
			code = n
		}
	} else {
	names:
		for c, words := range reasonWords {
			for _, sep := range []string{"", "-", "_", " "} {
				if key == strings.Join(words, sep) {
					code = c
					break names
				}
			}
		}
	}
	if err := checkReason(code); err != nil {
		return 0, fmt.Errorf("ca: revocation reason %q: %w", s, err)
	}
	return code, nil
}

func checkReason(code int) error {
	switch code {
	case ReasonUnspecified, ReasonKeyCompromise, ReasonAffiliationChanged, ReasonSuperseded,
		ReasonCessationOfOperation, ReasonCertificateHold, ReasonPrivilegeWithdrawn, ReasonAACompromise:
		return nil
	}
	return errors.New("want one of unspecified, keyCompromise, affiliationChanged, superseded, cessationOfOperation, certificateHold, privilegeWithdrawn, aACompromise")
}

// Revoke revokes serial (pending or valid) with an RFC 5280 reason code.
// A certificate on certificateHold may be revoked again with another
// reason, and any revoked certificate may be moved to keyCompromise; the
// revocation time stays the first one. Otherwise revoking twice is
// ErrAlreadyRevoked. Unknown serial: ErrUnknownSerial.
func (c *CA) Revoke(ctx context.Context, serial string, reason int) (*Certificate, error) {
	s, err := ParseSerial(serial)
	if err != nil {
		return nil, err
	}
	if err := checkReason(reason); err != nil {
		return nil, fmt.Errorf("ca: revocation reason %d: %w", reason, err)
	}
	now := c.clock().UTC().Truncate(time.Second)
	rec, err := c.store.UpdateRevocation(ctx, s, func(r *Record) error {
		if r.Status == StatusRefused {
			return fmt.Errorf("%w: serial %s was refused before signing; there is no certificate to revoke", ErrBadRequest, s)
		}
		if r.Status == StatusRevoked {
			switch {
			case r.Reason == ReasonCertificateHold && reason != ReasonCertificateHold:
			case reason == ReasonKeyCompromise && r.Reason != ReasonKeyCompromise:
			default:
				return fmt.Errorf("%w (%s since %s)", ErrAlreadyRevoked, ReasonString(r.Reason), r.RevokedAt.Format(time.RFC3339))
			}
			r.Reason = reason
			return nil
		}
		r.Status = StatusRevoked
		r.RevokedAt = now
		r.Reason = reason
		return nil
	})
	if err != nil {
		return nil, c.storeErr("revoke", s, err)
	}
	c.ocsp.forget(rec.Issuer, s)
	c.log.Info("ca: certificate revoked", "serial", s, "reason", ReasonString(reason))
	return c.certFromRecord(rec), nil
}

// Unrevoke takes a certificate off certificateHold (RFC 5280 §5.3.1); any
// other state is ErrNotOnHold.
func (c *CA) Unrevoke(ctx context.Context, serial string) (*Certificate, error) {
	s, err := ParseSerial(serial)
	if err != nil {
		return nil, err
	}
	rec, err := c.store.UpdateRevocation(ctx, s, func(r *Record) error {
		if r.Status != StatusRevoked || r.Reason != ReasonCertificateHold {
			return ErrNotOnHold
		}
		r.Status = StatusPending
		if r.Final {
			r.Status = StatusValid
		}
		r.RevokedAt = time.Time{}
		r.Reason = 0
		return nil
	})
	if err != nil {
		return nil, c.storeErr("unrevoke", s, err)
	}
	c.ocsp.forget(rec.Issuer, s)
	c.log.Info("ca: certificate taken off hold", "serial", s)
	return c.certFromRecord(rec), nil
}

func (c *CA) storeErr(op, serial string, err error) error {
	switch {
	case errors.Is(err, ErrUnknownSerial):
		return fmt.Errorf("%w %s", ErrUnknownSerial, serial)
	case errors.Is(err, ErrAlreadyRevoked), errors.Is(err, ErrNotOnHold):
		return fmt.Errorf("ca: %s %s: %w", op, serial, err)
	}
	return fmt.Errorf("ca: %s %s: store: %w", op, serial, err)
}

// Get returns the certificate record of serial (any accepted hex form), or
// ErrUnknownSerial.
func (c *CA) Get(ctx context.Context, serial string) (*Certificate, error) {
	s, err := ParseSerial(serial)
	if err != nil {
		return nil, err
	}
	rec, err := c.store.CertBySerial(ctx, s)
	if err != nil {
		return nil, c.storeErr("get", s, err)
	}
	return c.certFromRecord(rec), nil
}

// ListFilter selects certificates for List. Zero fields do not filter.
type ListFilter struct {
	// Revoked keeps revoked certificates only.
	Revoked bool
	// Pending keeps pending records only (serials that may have been
	// signed but whose final certificate is not stored).
	Pending bool
	// Refused keeps refused records only (serials recorded and then
	// refused by the lints, never signed); they are left out otherwise.
	Refused bool
	// ExpiringWithin keeps unexpired certificates whose NotAfter is within
	// this duration from now; zero keeps all, and List refuses a negative
	// one (ErrBadRequest).
	ExpiringWithin time.Duration
	Issuer         string
	Profile        string
	// After and Limit page through the records (After is the last serial
	// of the previous page).
	After string
	Limit int
}

// List returns the certificates f selects, ordered by serial.
func (c *CA) List(ctx context.Context, f ListFilter) ([]*Certificate, error) {
	q := Query{Issuer: f.Issuer, Profile: f.Profile, Limit: f.Limit}
	if f.After != "" {
		s, err := ParseSerial(f.After)
		if err != nil {
			return nil, err
		}
		q.After = s
	}
	if f.Revoked {
		q.Status = append(q.Status, StatusRevoked)
	}
	if f.Pending {
		q.Status = append(q.Status, StatusPending)
	}
	if f.Refused {
		q.Status = append(q.Status, StatusRefused)
	}
	if len(q.Status) == 0 {
		q.Status = []Status{StatusPending, StatusValid, StatusRevoked}
	}
	if f.ExpiringWithin < 0 {
		return nil, fmt.Errorf("%w: expiring-within %s is negative", ErrBadRequest, f.ExpiringWithin)
	}
	if f.ExpiringWithin > 0 {
		now := c.clock()
		q.NotAfterAfter = now
		q.NotAfterBefore = now.Add(f.ExpiringWithin)
	}
	recs, err := c.store.ListCerts(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("ca: list: %w", err)
	}
	out := make([]*Certificate, len(recs))
	for i, r := range recs {
		out[i] = c.certFromRecord(r)
	}
	return out, nil
}

func (c *CA) certFromRecord(r Record) *Certificate {
	cert := &Certificate{
		Serial:     r.Serial,
		DER:        r.DER,
		Issuer:     r.Issuer,
		Profile:    r.Profile,
		NotBefore:  r.NotBefore,
		NotAfter:   r.NotAfter,
		Names:      r.Names,
		Status:     r.Status,
		RevokedAt:  r.RevokedAt,
		Reason:     r.Reason,
		CTFailures: r.CTFailures,
	}
	if !r.Final {
		// Never hand out the linted copy or precertificate as if it were
		// the certificate.
		cert.DER = nil
	}
	if st, ok := c.issuers[r.Issuer]; ok {
		cert.Chain = st.chainDER
	}
	return cert
}
