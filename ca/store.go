package ca

import (
	"context"
	"errors"
	"time"
)

// Status is a certificate record's state.
type Status string

// Record states.
const (
	// StatusPending: the serial is reserved and a linted copy (or a
	// precertificate) is on record, but the final certificate is not
	// stored. The real signature may or may not exist, so a pending record
	// is revocable and appears on CRLs once revoked.
	StatusPending Status = "pending"
	// StatusValid: the final certificate is stored.
	StatusValid Status = "valid"
	// StatusRevoked: revoked (RevokedAt and Reason are set). A revoked
	// record may still lack its final certificate (Final false).
	StatusRevoked Status = "revoked"
	// StatusRefused: the serial was recorded while its copy was being
	// linted, and the lints refused that copy; the issuer key never signed
	// it. The serial stays on record so that it is never reused. A refused
	// record is not revocable, not listed unless asked for, and OCSP
	// answers unknown for it.
	StatusRefused Status = "refused"
)

// Record is what the store keeps per serial.
type Record struct {
	Serial  string // lower-case hex, no leading zeros (SerialString)
	Issuer  string
	Profile string
	Status  Status
	// Final is true once DER holds the certificate signed by the issuer
	// key. Before that DER holds the linted copy signed by a throwaway key,
	// or the precertificate (Precert true).
	Final     bool
	Precert   bool
	DER       []byte
	Names     []string
	NotBefore time.Time
	NotAfter  time.Time
	Created   time.Time
	RevokedAt time.Time // zero unless revoked
	Reason    int       // RFC 5280 §5.3.1 reason code, valid if revoked
	// CTFailures names the logs that did not return an SCT (best-effort
	// CT issuance).
	CTFailures []string
}

// RevokedEntry is one revoked serial as a CRL needs it.
type RevokedEntry struct {
	Serial    string
	RevokedAt time.Time
	Reason    int
	NotAfter  time.Time
}

// Query selects records for Store.ListCerts. Zero fields do not filter.
type Query struct {
	Issuer  string
	Profile string
	Status  []Status // any of
	// NotAfterBefore keeps records with NotAfter before it;
	// NotAfterAfter keeps records with NotAfter after it.
	NotAfterBefore time.Time
	NotAfterAfter  time.Time
	// After is a cursor: only serials that sort after it (by store order).
	After string
	// Limit bounds the result; zero means no limit.
	Limit int
}

// Store is the persistence ca needs. store.Store implements it on bbolt;
// implementations must be safe for concurrent use and durable once a
// method returns nil.
type Store interface {
	// ReserveSerial records rec (Status pending) under rec.Serial. It
	// returns ErrSerialExists if the serial was ever recorded.
	ReserveSerial(ctx context.Context, rec Record) error
	// StoreIssued puts the final certificate der on the record of serial
	// and sets Final (Status pending becomes valid; revoked stays revoked).
	// ctFailures is recorded as is.
	StoreIssued(ctx context.Context, serial string, der []byte, ctFailures []string) error
	// CertBySerial returns the record of serial or ErrUnknownSerial.
	CertBySerial(ctx context.Context, serial string) (Record, error)
	// ListCerts returns the records q selects, in store order.
	ListCerts(ctx context.Context, q Query) ([]Record, error)
	// UpdateRevocation loads the record of serial (ErrUnknownSerial if
	// none), lets update change Status, RevokedAt and Reason, and stores
	// the result atomically; if update returns an error nothing changes.
	// Issuance also uses it to mark a pending record StatusRefused.
	// The revoked-serial index that RevokedSerials reads follows.
	UpdateRevocation(ctx context.Context, serial string, update func(*Record) error) (Record, error)
	// RevokedSerials lists the revoked serials of issuer.
	RevokedSerials(ctx context.Context, issuer string) ([]RevokedEntry, error)
	// NextCRLNumber returns a CRL number for issuer strictly greater than
	// any it returned before, durably.
	NextCRLNumber(ctx context.Context, issuer string) (uint64, error)
	// SaveCRL stores der as issuer's latest CRL unless a CRL with a
	// higher number is stored already.
	SaveCRL(ctx context.Context, issuer string, number uint64, der []byte) error
	// LatestCRL returns issuer's latest CRL or ErrNoCRL.
	LatestCRL(ctx context.Context, issuer string) ([]byte, error)
}

// Store errors.
var (
	// ErrSerialExists is returned by Store.ReserveSerial for a serial that
	// is already on record.
	ErrSerialExists = errors.New("ca: serial already on record")
	// ErrNoCRL is returned by Store.LatestCRL before the first CRL.
	ErrNoCRL = errors.New("ca: no CRL generated yet")
)
