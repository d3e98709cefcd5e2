package server

import (
	"time"
)

// The admin API speaks JSON. These types are its wire format; the CLI's
// admin client decodes the same structs. Paths (all under /admin/):
//
//	GET  /admin/hsm/status          → QuorumStatus
//	POST /admin/hsm/activate        ActivateRequest → QuorumStatus
//	POST /admin/hsm/seal            → QuorumStatus
//	POST /admin/cert/issue          IssueRequest → CertInfo (with PEM)
//	POST /admin/cert/revoke         RevokeRequest → CertInfo
//	GET  /admin/cert/list?...       → CertList
//	GET  /admin/cert/show/{serial}  → CertInfo (with PEM)
//	POST /admin/crl/generate        CRLRequest → CRLInfo
//
// Errors are RFC 7807 problem documents (application/problem+json, see
// Problem).

// QuorumStatus is the activation state of the issuing partition as the
// admin API and /healthz report it.
type QuorumStatus struct {
	Partition string `json:"partition"`
	// State is "sealed", "collecting" or "active".
	State     string `json:"state"`
	Presented int    `json:"presented"` // k
	Threshold int    `json:"threshold"` // M
	Shares    int    `json:"shares"`    // N
	// LockedUntil is set while the partition refuses shares after repeated
	// bad ones.
	LockedUntil time.Time `json:"locked_until,omitzero"`
}

// Active reports whether the partition's keys can sign.
func (q QuorumStatus) Active() bool { return q.State == StateActive }

// Partition states, as hsm names them.
const (
	StateSealed     = "sealed"
	StateCollecting = "collecting"
	StateActive     = "active"
)

// ActivateRequest presents one custodian share. Share is the share's
// printable text form (an age-encrypted share is decrypted by the custodian's
// client first: the server never holds custodians' identities).
type ActivateRequest struct {
	Share string `json:"share"`
}

// IssueRequest asks the CA to issue a certificate for a PEM CSR.
type IssueRequest struct {
	CSR     string `json:"csr"` // PEM "CERTIFICATE REQUEST"
	Profile string `json:"profile"`
	Issuer  string `json:"issuer,omitempty"`
	// NotBefore/NotAfter, for profiles that allow choosing the window.
	NotBefore time.Time `json:"not_before,omitzero"`
	NotAfter  time.Time `json:"not_after,omitzero"`
}

// RevokeRequest revokes a serial; Reason is an RFC 5280 reason name or
// number (empty: unspecified).
type RevokeRequest struct {
	Serial string `json:"serial"`
	Reason string `json:"reason,omitempty"`
}

// UnrevokeRequest is the body of POST /admin/cert/unrevoke.
type UnrevokeRequest struct {
	Serial string `json:"serial"`
}

// CertInfo describes one certificate record.
type CertInfo struct {
	Serial     string    `json:"serial"`
	Issuer     string    `json:"issuer"`
	Profile    string    `json:"profile"`
	Status     string    `json:"status"`
	Names      []string  `json:"names,omitempty"`
	NotBefore  time.Time `json:"not_before"`
	NotAfter   time.Time `json:"not_after"`
	RevokedAt  time.Time `json:"revoked_at,omitzero"`
	Reason     string    `json:"reason,omitempty"`
	CTFailures []string  `json:"ct_failures,omitempty"`
	// Certificate and Chain are PEM; set by issue and show, empty in lists
	// and for pending records.
	Certificate string `json:"certificate,omitempty"`
	Chain       string `json:"chain,omitempty"`
}

// CertList is one page of certificates; Next is the cursor for the next
// page ("" at the end).
type CertList struct {
	Certificates []CertInfo `json:"certificates"`
	Next         string     `json:"next,omitempty"`
}

// CRLRequest names the issuer whose CRL to generate ("" for every issuer).
type CRLRequest struct {
	Issuer string `json:"issuer,omitempty"`
}

// CRLInfo reports the CRLs generated.
type CRLInfo struct {
	CRLs []CRLEntry `json:"crls"`
	// DefaultIssuer is the issuer a request that names none means.
	DefaultIssuer string `json:"default_issuer,omitempty"`
	// Failed lists the issuers whose CRL could not be made when a request
	// naming no issuer made the others' (the answer is then still 200).
	Failed []CRLFailure `json:"failed,omitempty"`
}

// CRLFailure is an issuer whose CRL could not be made, and why (the
// problem detail: "the CA awaits quorum ...", or a pointer to the log).
type CRLFailure struct {
	Issuer string `json:"issuer"`
	Reason string `json:"reason"`
}

// CRLEntry is one generated CRL.
type CRLEntry struct {
	Issuer     string    `json:"issuer"`
	Number     string    `json:"number"`
	ThisUpdate time.Time `json:"this_update"`
	NextUpdate time.Time `json:"next_update"`
	Entries    int       `json:"entries"`
	URL        string    `json:"url,omitempty"`
	PEM        string    `json:"pem"` // the CRL, PEM "X509 CRL"
}

// Health is the /healthz document.
type Health struct {
	// Status is "serving" (200) or "degraded" (503, the store fails).
	Status string       `json:"status"`
	Sealed bool         `json:"sealed"`
	Quorum QuorumStatus `json:"quorum"`
	Store  string       `json:"store"` // "ok" or "error"
}
