package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hsmca/hsmca/ca"
)

// Problem is an RFC 7807 problem document, the body of every admin API
// error. Type is a URN under urn:hsmca:error:.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title,omitempty"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
	// Lints lists the findings when a certificate failed its lint check.
	Lints []ca.LintResult `json:"lints,omitempty"`
	// RetryAfter mirrors the Retry-After header (seconds) for 503s.
	RetryAfter int `json:"retry_after,omitempty"`
}

// Error makes a decoded Problem usable as an error by clients.
func (p *Problem) Error() string {
	if p.Detail != "" {
		return p.Detail
	}
	return fmt.Sprintf("%s (HTTP %d)", p.Type, p.Status)
}

// Problem types.
const (
	ProbUnavailable   = "urn:hsmca:error:unavailable" // sealed: awaits quorum
	ProbMalformed     = "urn:hsmca:error:malformed"
	ProbUnauthorized  = "urn:hsmca:error:unauthorized"
	ProbNotFound      = "urn:hsmca:error:notFound"
	ProbMethod        = "urn:hsmca:error:methodNotAllowed"
	ProbTooLarge      = "urn:hsmca:error:tooLarge"
	ProbBadCSR        = "urn:hsmca:error:badCSR"
	ProbPolicy        = "urn:hsmca:error:rejectedIdentifier"
	ProbLint          = "urn:hsmca:error:lint"
	ProbConflict      = "urn:hsmca:error:conflict"
	ProbShareRefused  = "urn:hsmca:error:shareRefused"
	ProbLocked        = "urn:hsmca:error:locked"
	ProbCT            = "urn:hsmca:error:ct"
	ProbInternal      = "urn:hsmca:error:serverInternal"
	ContentTypeProb   = "application/problem+json"
	contentTypeJSON   = "application/json"
	defaultRetryAfter = 10 * time.Second
)

// Errors that a Quorum implementation returns (wrapped) so that the admin
// API can answer with the right status.
var (
	// ErrShareRefused: the share does not belong here or fails its checks
	// (422). The wrapping error's text names the share index and the reason
	// and must never quote the share.
	ErrShareRefused = errors.New("server: share refused")
	// ErrShareDuplicate: the share was presented already (409).
	ErrShareDuplicate = errors.New("server: share already presented")
	// ErrLocked: the partition refuses shares after repeated bad ones (423).
	ErrLocked = errors.New("server: partition locked after repeated bad shares")
)

// SealedDetail is the text every 503 answer carries while the CA awaits its
// quorum, e.g. "CA awaits quorum (1 of 2)".
func SealedDetail(q QuorumStatus) string {
	return fmt.Sprintf("CA awaits quorum (%d of %d)", q.Presented, q.Threshold)
}

func writeProblem(w http.ResponseWriter, p *Problem) {
	if p.Status == 0 {
		p.Status = http.StatusInternalServerError
	}
	if p.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(p.RetryAfter))
	}
	w.Header().Set("Content-Type", ContentTypeProb)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", contentTypeJSON)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func problemf(status int, typ, format string, args ...any) *Problem {
	return &Problem{Type: typ, Status: status, Detail: fmt.Sprintf(format, args...)}
}

// sealedProblem is the 503 answer while the issuing partition is not active.
func (s *Server) sealedProblem() *Problem {
	q, _ := s.quorumStatus()
	return &Problem{
		Type:       ProbUnavailable,
		Title:      "CA sealed",
		Status:     http.StatusServiceUnavailable,
		Detail:     SealedDetail(q) + ": custodians activate it with `hsmca hsm activate --server URL --share FILE`",
		RetryAfter: int(s.retryAfter / time.Second),
	}
}

// caProblem maps a ca error to a problem. Unknown errors become
// serverInternal without their text (it is logged instead).
func (s *Server) caProblem(r *http.Request, err error) *Problem {
	var (
		bad    *ca.ErrBadCSR
		policy *ca.ErrPolicy
		lint   *ca.ErrLint
		ctErr  *ca.ErrCT
		mbe    *http.MaxBytesError
	)
	switch {
	case errors.Is(err, ca.ErrSealed):
		return s.sealedProblem()
	case errors.As(err, &mbe):
		return problemf(http.StatusRequestEntityTooLarge, ProbTooLarge, "request body larger than %d bytes", mbe.Limit)
	case errors.As(err, &bad):
		return problemf(http.StatusBadRequest, ProbBadCSR, "%s", bad.Error())
	case errors.As(err, &policy):
		return problemf(http.StatusForbidden, ProbPolicy, "%s", policy.Error())
	case errors.As(err, &lint):
		p := problemf(http.StatusUnprocessableEntity, ProbLint, "the certificate failed its lint check; nothing was signed")
		p.Lints = lint.Results
		return p
	case errors.As(err, &ctErr):
		return problemf(http.StatusBadGateway, ProbCT, "%s", ctErr.Error())
	case errors.Is(err, ca.ErrUnknownSerial):
		return problemf(http.StatusNotFound, ProbNotFound, "%s", err.Error())
	case errors.Is(err, ca.ErrUnknownProfile), errors.Is(err, ca.ErrUnknownIssuer), errors.Is(err, ca.ErrBadRequest):
		return problemf(http.StatusBadRequest, ProbMalformed, "%s", err.Error())
	case errors.Is(err, ca.ErrAlreadyRevoked), errors.Is(err, ca.ErrNotOnHold):
		return problemf(http.StatusConflict, ProbConflict, "%s", err.Error())
	case errors.Is(err, ca.ErrNoCRL):
		return problemf(http.StatusNotFound, ProbNotFound, "%s", err.Error())
	}
	s.log.Error("server: internal error", "path", r.URL.Path, "err", err)
	return problemf(http.StatusInternalServerError, ProbInternal, "internal error; see the server log")
}

// quorumProblem maps a Quorum.AddShare error.
func (s *Server) quorumProblem(r *http.Request, err error) *Problem {
	switch {
	case errors.Is(err, ErrShareRefused):
		return problemf(http.StatusUnprocessableEntity, ProbShareRefused, "%s", trimPrefix(err))
	case errors.Is(err, ErrShareDuplicate):
		return problemf(http.StatusConflict, ProbConflict, "%s", trimPrefix(err))
	case errors.Is(err, ErrLocked):
		return problemf(http.StatusLocked, ProbLocked, "%s", trimPrefix(err))
	}
	s.log.Error("server: quorum error", "path", r.URL.Path, "err", err)
	return problemf(http.StatusInternalServerError, ProbInternal, "internal error; see the server log")
}

// trimPrefix drops the "server: share refused: " wrapper so the detail
// starts with what the module said.
func trimPrefix(err error) string {
	msg := err.Error()
	for _, sentinel := range []error{ErrShareRefused, ErrShareDuplicate, ErrLocked} {
		msg = strings.TrimPrefix(msg, sentinel.Error()+": ")
	}
	return msg
}

// discardLogger is used when Deps.Logger is nil.
func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
