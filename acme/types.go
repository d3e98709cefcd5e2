package acme

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Status values of ACME objects (RFC 8555 §7.1.6).
const (
	StatusPending     = "pending"
	StatusProcessing  = "processing"
	StatusReady       = "ready"
	StatusValid       = "valid"
	StatusInvalid     = "invalid"
	StatusDeactivated = "deactivated"
	StatusRevoked     = "revoked"
	StatusExpired     = "expired"
)

// Identifier is an ACME identifier (RFC 8555 §9.7.7): Type is "dns" or "ip".
type Identifier struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

// CA is what the ACME server needs from a certificate authority. The CLI
// adapts the real CA to it; acme never imports package ca.
//
// Issue signs the CSR (DER) for the identifiers, which the server has already
// validated and matched against the CSR. It may return *UnavailableError,
// *RejectedError or *BadCSRError; any other error is reported to the client
// as serverInternal without its text.
type CA interface {
	Issue(ctx context.Context, req IssueRequest) (*Issued, error)
	// CheckNames applies the CA's name policy before an order is created;
	// it returns *RejectedError for a name the policy refuses.
	CheckNames(profile string, ids []Identifier) error
	// Revoke revokes a certificate the CA issued (reason: RFC 5280 code).
	Revoke(ctx context.Context, serial string, reason int) error
}

// IssueRequest is one certificate to sign.
type IssueRequest struct {
	CSR []byte
	// ParsedCSR, when set, is CSR parsed, and the server has checked its
	// signature (proof of possession, RFC 8555 §7.4), so the CA need not
	// check it again. It is nil when the server did not (an issuance
	// resumed after a restart).
	ParsedCSR   *x509.CertificateRequest
	Profile     string
	Identifiers []Identifier
	NotBefore   time.Time // zero: profile default
	NotAfter    time.Time // zero: profile default
}

// Issued is a signed certificate and the chain up to (not including) the root.
type Issued struct {
	Serial string   // hex, as the CA records it
	DER    []byte   // the leaf
	Chain  [][]byte // intermediates, leaf's issuer first
}

// UnavailableError says the CA cannot sign right now (for example sealed,
// awaiting quorum). Finalize answers 503 with Detail and Retry-After.
type UnavailableError struct {
	Detail     string
	RetryAfter time.Duration
}

func (e *UnavailableError) Error() string { return "acme: CA unavailable: " + e.Detail }

// RejectedError says the CA's policy refuses an identifier
// (rejectedIdentifier).
type RejectedError struct {
	Identifier Identifier
	Reason     string
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("acme: identifier %s rejected: %s", e.Identifier.Value, e.Reason)
}

// BadCSRError says the CA refuses the CSR itself (badCSR).
type BadCSRError struct{ Reason string }

func (e *BadCSRError) Error() string { return "acme: bad CSR: " + e.Reason }

// Store errors. Implementations return (or wrap) these.
var (
	// ErrNotFound: no such record.
	ErrNotFound = errors.New("acme: not found")
	// ErrConflict: a unique index (account key) is already taken.
	ErrConflict = errors.New("acme: conflict")
	// ErrEABBound: CreateAccount found the account's EAB key bound to
	// another account (RFC 8555 §7.3.4: one key, one account).
	ErrEABBound = errors.New("acme: EAB key already bound to an account")
	// ErrEABRevoked: CreateAccount found the account's EAB key revoked.
	ErrEABRevoked = errors.New("acme: EAB key revoked")
)

// Account is a stored ACME account (RFC 8555 §7.1.2).
type Account struct {
	ID        string          `json:"id"`
	Key       json.RawMessage `json:"k"`  // JWK (public), JSON, stored as is
	KeyThumb  string          `json:"kt"` // RFC 7638 thumbprint, base64url
	Status    string          `json:"s"`
	Contact   []string        `json:"c,omitempty"`
	ToSAgreed bool            `json:"tos,omitempty"`
	EABKeyID  string          `json:"eab,omitempty"`
	Created   time.Time       `json:"cr"`
}

// Order is a stored order (RFC 8555 §7.1.3). Status is the stored part; the
// server derives "ready"/"invalid" from the authorizations when it reads.
type Order struct {
	ID          string       `json:"id"`
	AccountID   string       `json:"a"`
	Status      string       `json:"s"`
	Expires     time.Time    `json:"e"`
	Identifiers []Identifier `json:"i"`
	NotBefore   time.Time    `json:"nb,omitzero"`
	NotAfter    time.Time    `json:"na,omitzero"`
	Profile     string       `json:"p,omitempty"`
	Replaces    string       `json:"r,omitempty"`
	Authzs      []string     `json:"z"`
	CSR         []byte       `json:"csr,omitempty"`
	CertSerial  string       `json:"cs,omitempty"`
	Error       *Problem     `json:"err,omitempty"`
	Created     time.Time    `json:"cr"`
}

// Authz is a stored authorization with its challenges (RFC 8555 §7.1.4).
type Authz struct {
	ID         string       `json:"id"`
	AccountID  string       `json:"a"`
	Identifier Identifier   `json:"i"`
	Wildcard   bool         `json:"w,omitempty"`
	Status     string       `json:"s"`
	Expires    time.Time    `json:"e"`
	Token      string       `json:"t"` // shared by all challenges of this authz
	Challenges []*Challenge `json:"c"`
}

// Challenge is one challenge of an authorization (RFC 8555 §7.1.5).
type Challenge struct {
	Type      string    `json:"t"`
	Status    string    `json:"s"`
	Validated time.Time `json:"v,omitzero"`
	Error     *Problem  `json:"err,omitempty"`
	// Attempts is how many validation attempts of the challenge have
	// failed in full (an inline attempt cut short does not count),
	// written with the processing state and with each failure, so that a
	// restart resumes the count (1+ValidationRetries in all).
	Attempts int `json:"n,omitempty"`
}

// Cert is an issued certificate as the ACME server keeps it: who owns it,
// for revocation and download.
type Cert struct {
	Serial    string    `json:"sn"`  // lower-case hex, no leading zeros
	CASerial  string    `json:"cas"` // the serial as the CA reported it
	AccountID string    `json:"a"`
	OrderID   string    `json:"o"`
	DER       []byte    `json:"d"`
	Chain     [][]byte  `json:"ch,omitempty"`
	NotBefore time.Time `json:"nb"`
	NotAfter  time.Time `json:"na"`
	Revoked   bool      `json:"rv,omitempty"`
	Replaced  bool      `json:"rp,omitempty"` // an order that named it in "replaces" became valid
	// ReplacedBy is the last order created with this certificate in
	// "replaces" (RFC 9773 §5); while that order is not invalid, no other
	// order may name it.
	ReplacedBy string `json:"rb,omitempty"`
}

// EAB is an external account binding key (RFC 8555 §7.3.4).
type EAB struct {
	KeyID     string    `json:"id"`
	Key       []byte    `json:"k"` // HMAC key
	Label     string    `json:"l,omitempty"`
	Created   time.Time `json:"cr"`
	Revoked   bool      `json:"rv,omitempty"`
	AccountID string    `json:"a,omitempty"` // the account bound with it; set once
}

// Work kinds the server records so that a restart resumes them.
const (
	WorkValidate = "v" // ID: authzID/challengeType
	WorkFinalize = "f" // ID: orderID
)

// Store is the durable state of the ACME server. Every method that returns
// without error has made its write durable. store.Store implements it on
// bbolt; methods must be safe for concurrent use.
type Store interface {
	// CreateAccount stores a new account and indexes its key thumbprint;
	// ErrConflict if the thumbprint is taken. If a.EABKeyID is set it
	// claims that EAB key for a in the same transaction (EAB.AccountID):
	// ErrNotFound if the key does not exist, ErrEABRevoked if it is
	// revoked, ErrEABBound if another account holds it. Of concurrent
	// calls naming one key, at most one succeeds.
	CreateAccount(ctx context.Context, a *Account) error
	GetAccount(ctx context.Context, id string) (*Account, error)
	GetAccountByKey(ctx context.Context, thumb string) (*Account, error)
	// UpdateAccount replaces an account. oldThumb is the key thumbprint
	// the caller read; ErrConflict if the stored account has another one
	// (the caller's read is stale). If a.KeyThumb differs from oldThumb
	// the key index moves atomically (ErrConflict if the new key is
	// taken).
	UpdateAccount(ctx context.Context, a *Account, oldThumb string) error

	// CreateOrder stores an order and those of its authorizations that are
	// new (reused ones are already stored).
	CreateOrder(ctx context.Context, o *Order, newAuthzs []*Authz) error
	GetOrder(ctx context.Context, id string) (*Order, error)
	// UpdateOrder replaces an order; work, if not empty, is recorded
	// (add=true) or cleared in the same transaction. ErrNotFound if the
	// order is not stored (a Pruner deleted it): an update never brings
	// back a deleted record. UpdateAuthz and UpdateCert do the same.
	UpdateOrder(ctx context.Context, o *Order, work string, add bool) error
	// ListOrders returns up to limit order IDs of an account after cursor
	// (exclusive, "" for the start) in creation order, and the next cursor
	// ("" at the end).
	ListOrders(ctx context.Context, accountID, cursor string, limit int) ([]string, string, error)

	GetAuthz(ctx context.Context, id string) (*Authz, error)
	// UpdateAuthz replaces an authorization and records or clears work as
	// UpdateOrder does. A valid authz is indexed for reuse.
	UpdateAuthz(ctx context.Context, a *Authz, work string, add bool) error
	// FindValidAuthz returns, of the account's authorizations for the
	// identifier (wildcard flag included) whose stored status is valid,
	// the one that expires last, or ErrNotFound. Deactivating one of them
	// leaves the others findable. The caller checks expiry.
	FindValidAuthz(ctx context.Context, accountID string, id Identifier, wildcard bool) (*Authz, error)

	// FinishOrder stores the certificate and the order (now valid) in one
	// transaction and clears the order's finalize work.
	FinishOrder(ctx context.Context, o *Order, c *Cert) error
	GetCert(ctx context.Context, serial string) (*Cert, error)
	UpdateCert(ctx context.Context, c *Cert) error

	// ListWork returns the pending work items of a kind.
	ListWork(ctx context.Context, kind string) ([]string, error)

	// GetMeta/PutMeta keep small server state (nonce key and epoch).
	// GetMeta returns ErrNotFound for a missing key.
	GetMeta(ctx context.Context, key string) ([]byte, error)
	PutMeta(ctx context.Context, key string, val []byte) error

	PutEAB(ctx context.Context, e *EAB) error
	// RevokeEAB marks an EAB key revoked and forgets its HMAC key in one
	// transaction, keeping the account it is bound to (ErrNotFound if
	// there is no such key): a binding made at the same time is not lost.
	RevokeEAB(ctx context.Context, keyID string) error
	GetEAB(ctx context.Context, keyID string) (*EAB, error)
	ListEAB(ctx context.Context) ([]*EAB, error)
}
