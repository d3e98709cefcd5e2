package ct

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// ErrPolicy is matched (errors.Is) by the error GetSCTs returns when too few
// SCTs, or SCTs from too few operators, arrived.
var ErrPolicy = errors.New("ct: SCT policy not met")

// Reason classifies why a log gave no SCT. It is also the "reason" label of
// the hsmca_ct_scts_failed_total metric.
type Reason string

// Failure reasons.
const (
	ReasonTimeout      Reason = "timeout"       // an attempt got no answer within Timeout
	ReasonNetwork      Reason = "network"       // connection refused, reset, DNS...
	ReasonHTTP5xx      Reason = "http_5xx"      // the log answered 5xx
	ReasonHTTP429      Reason = "http_429"      // the log asked us to slow down
	ReasonHTTP4xx      Reason = "http_4xx"      // the log refused the chain
	ReasonBadResponse  Reason = "bad_response"  // unparseable answer or unusable SCT
	ReasonBadSignature Reason = "bad_signature" // the SCT does not verify under the log's key
	ReasonDeadline     Reason = "deadline"      // the overall deadline ended the submission
	ReasonCanceled     Reason = "canceled"      // the caller's context was cancelled
	ReasonNotAccepted  Reason = "not_accepted"  // outside the log's temporal interval; not submitted
)

func (r Reason) retryable() bool {
	switch r {
	case ReasonTimeout, ReasonNetwork, ReasonHTTP5xx, ReasonHTTP429:
		return true
	}
	return false
}

// LogError is one log's failure to provide a usable SCT.
type LogError struct {
	Log      string // the log's name
	URL      string
	Reason   Reason
	Attempts int // requests made (0 if none)
	Err      error
}

func (e *LogError) Error() string {
	s := fmt.Sprintf("log %s: %s: %v", e.Log, e.Reason, e.Err)
	if e.Attempts > 1 {
		s += fmt.Sprintf(" (after %d attempts)", e.Attempts)
	}
	return s
}

func (e *LogError) Unwrap() error { return e.Err }

// PolicyError reports an unmet SCT policy and why each failing log failed.
type PolicyError struct {
	SCTs, Operators       int // what arrived and verified
	MinSCTs, MinOperators int // what the policy asks for
	Failures              []*LogError
}

func (e *PolicyError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "ct: SCT policy not met: got %d SCTs from %d operators, need %d from %d",
		e.SCTs, e.Operators, e.MinSCTs, e.MinOperators)
	for _, f := range e.Failures {
		b.WriteString("; ")
		b.WriteString(f.Error())
	}
	return b.String()
}

// Is makes errors.Is(err, ErrPolicy) true.
func (e *PolicyError) Is(target error) bool { return target == ErrPolicy }

// sortFailures orders failures by the logs' configured order.
func sortFailures(fs []*LogError, logs []*logClient) {
	pos := make(map[string]int, len(logs))
	for i, l := range logs {
		pos[l.Name] = i
	}
	sort.SliceStable(fs, func(i, j int) bool { return pos[fs[i].Log] < pos[fs[j].Log] })
}
