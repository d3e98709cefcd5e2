package acme

import (
	"errors"
	"net/http"
	"strconv"
	"time"
)

// ACME error types (RFC 8555 §6.7).
const (
	errNS                     = "urn:ietf:params:acme:error:"
	ProbAccountDoesNotExist   = errNS + "accountDoesNotExist"
	ProbAlreadyRevoked        = errNS + "alreadyRevoked"
	ProbBadCSR                = errNS + "badCSR"
	ProbBadNonce              = errNS + "badNonce"
	ProbBadPublicKey          = errNS + "badPublicKey"
	ProbBadRevocationReason   = errNS + "badRevocationReason"
	ProbBadSignatureAlgorithm = errNS + "badSignatureAlgorithm"
	ProbConnection            = errNS + "connection"
	ProbDNS                   = errNS + "dns"
	ProbExternalAccountReq    = errNS + "externalAccountRequired"
	ProbIncorrectResponse     = errNS + "incorrectResponse"
	ProbInvalidContact        = errNS + "invalidContact"
	ProbMalformed             = errNS + "malformed"
	ProbOrderNotReady         = errNS + "orderNotReady"
	ProbRateLimited           = errNS + "rateLimited"
	ProbRejectedIdentifier    = errNS + "rejectedIdentifier"
	ProbServerInternal        = errNS + "serverInternal"
	ProbTLS                   = errNS + "tls"
	ProbUnauthorized          = errNS + "unauthorized"
	ProbUnsupportedContact    = errNS + "unsupportedContact"
	ProbUnsupportedIdentifier = errNS + "unsupportedIdentifier"
	ProbUserActionRequired    = errNS + "userActionRequired"
	ProbAlreadyReplaced       = errNS + "alreadyReplaced"
	ProbInvalidProfile        = errNS + "invalidProfile"
)

// Problem is an RFC 7807 problem document with ACME subproblems
// (RFC 8555 §6.7.1). It is also an error.
type Problem struct {
	Type        string      `json:"type"`
	Detail      string      `json:"detail,omitempty"`
	Status      int         `json:"status,omitempty"`
	Identifier  *Identifier `json:"identifier,omitempty"`
	Subproblems []*Problem  `json:"subproblems,omitempty"`
	// Algorithms lists the JWS algorithms the server accepts, in a
	// badSignatureAlgorithm problem (RFC 8555 §6.2).
	Algorithms []string `json:"algorithms,omitempty"`

	retryAfter time.Duration
}

func (p *Problem) Error() string { return "acme: " + p.Type + ": " + p.Detail }

func prob(typ string, status int, detail string) *Problem {
	return &Problem{Type: typ, Status: status, Detail: detail}
}

func malformed(detail string) *Problem { return prob(ProbMalformed, 400, detail) }
func unauthorized(detail string) *Problem {
	return prob(ProbUnauthorized, 403, detail)
}
func notFound() *Problem { return prob(ProbMalformed, 404, "no such resource") }
func internal() *Problem {
	return prob(ProbServerInternal, 500, "internal error; the server logged the cause")
}

// toProblem maps an error from the CA or store to the problem the client
// sees. Unknown errors become serverInternal without their text.
func toProblem(err error) *Problem {
	var p *Problem
	if errors.As(err, &p) {
		return p
	}
	var ue *UnavailableError
	if errors.As(err, &ue) {
		ra := ue.RetryAfter
		if ra <= 0 {
			ra = 30 * time.Second
		}
		return &Problem{Type: ProbServerInternalUnavailable, Status: 503, Detail: ue.Detail, retryAfter: ra}
	}
	var re *RejectedError
	if errors.As(err, &re) {
		id := re.Identifier
		return &Problem{Type: ProbRejectedIdentifier, Status: 400, Detail: re.Reason,
			Subproblems: []*Problem{{Type: ProbRejectedIdentifier, Detail: re.Reason, Identifier: &id}}}
	}
	var be *BadCSRError
	if errors.As(err, &be) {
		return prob(ProbBadCSR, 400, be.Reason)
	}
	if errors.Is(err, ErrNotFound) {
		return notFound()
	}
	return internal()
}

// ProbServerInternalUnavailable is the type of the 503 answer while the CA
// cannot sign (sealed, awaiting quorum). RFC 8555 defines no type for a
// temporarily unavailable server and serverInternal would tell the client
// something broke, so hsmca uses its own URN; the detail quotes the CA
// ("CA awaits quorum (1 of 2)") and Retry-After says when to try again.
const ProbServerInternalUnavailable = "urn:hsmca:acme:error:unavailable"

func (s *Server) writeProblem(w http.ResponseWriter, p *Problem) {
	h := w.Header()
	if p.retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int((p.retryAfter+time.Second-1)/time.Second)))
	}
	if p.Status == 0 {
		p.Status = 400
	}
	h.Set("Content-Type", "application/problem+json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(p.Status)
	b, _ := jsonMarshal(p)
	w.Write(b)
}
