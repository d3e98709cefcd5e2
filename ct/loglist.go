package ct

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/google/certificate-transparency-go/loglist3"
)

// ParseLogList parses a log list in the loglist3 JSON format and returns
// every log in it, whatever its state, so that SCTs from logs that have
// since been retired can still be checked. Each log's key is parsed and its
// listed log_id must match the key. RFC 6962 logs take their URL from url,
// static-ct-api logs from submission_url.
func ParseLogList(data []byte) ([]Log, error) {
	ll, err := loglist3.NewFromJSON(data)
	if err != nil {
		return nil, fmt.Errorf("ct: %w", err)
	}
	var logs []Log
	for _, op := range ll.Operators {
		if op == nil {
			continue
		}
		for _, l := range op.Logs {
			if l == nil {
				continue
			}
			got, err := listedLog(op.Name, l.Description, l.URL, l.Key, l.LogID, l.State, l.TemporalInterval)
			if err != nil {
				return nil, err
			}
			logs = append(logs, got)
		}
		for _, l := range op.TiledLogs {
			if l == nil {
				continue
			}
			got, err := listedLog(op.Name, l.Description, l.SubmissionURL, l.Key, l.LogID, l.State, l.TemporalInterval)
			if err != nil {
				return nil, err
			}
			logs = append(logs, got)
		}
	}
	return logs, nil
}

func listedLog(operator, desc, url string, key, logID []byte, state *loglist3.LogStates, ti *loglist3.TemporalInterval) (Log, error) {
	name := desc
	if name == "" {
		name = url
	}
	pub, id, err := ParsePublicKey(key)
	if err != nil {
		return Log{}, fmt.Errorf("%w (log list entry %q)", err, name)
	}
	if len(logID) > 0 && !bytes.Equal(logID, id[:]) {
		return Log{}, fmt.Errorf("ct: log list entry %q: log_id does not match its key", name)
	}
	if url != "" {
		if err := checkLogURL(url); err != nil {
			return Log{}, fmt.Errorf("ct: log list entry %q: %w", name, err)
		}
	}
	if name == "" {
		name = "log " + base64.StdEncoding.EncodeToString(id[:])
	}
	if operator == "" {
		operator = name
	}
	l := Log{
		Name:      name,
		URL:       strings.TrimRight(url, "/"),
		Operator:  operator,
		ID:        id,
		PublicKey: pub,
		State:     stateName(state),
	}
	if ti != nil {
		l.NotAfterStart, l.NotAfterEnd = ti.StartInclusive, ti.EndExclusive
	}
	return l, nil
}

func stateName(s *loglist3.LogStates) string {
	switch s.LogStatus() {
	case loglist3.PendingLogStatus:
		return "pending"
	case loglist3.QualifiedLogStatus:
		return "qualified"
	case loglist3.UsableLogStatus:
		return "usable"
	case loglist3.ReadOnlyLogStatus:
		return "readonly"
	case loglist3.RetiredLogStatus:
		return "retired"
	case loglist3.RejectedLogStatus:
		return "rejected"
	}
	return ""
}
