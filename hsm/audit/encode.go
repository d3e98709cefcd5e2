package audit

import (
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/hsmca/hsmca/hsm"
)

// appendRecord encodes ev as the JSON object encoding/json would produce
// for hsm.AuditEvent (same field names and omissions), without reflection:
// every signature appends one record, so this is on the signing path.
// Strings must be valid UTF-8 (Begin makes them so).
func appendRecord(b []byte, ev *hsm.AuditEvent) []byte {
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, ev.Seq, 10)
	b = append(b, `,"time":"`...)
	b = ev.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","type":`...)
	b = appendJSONString(b, ev.Type)
	if ev.Partition != "" {
		b = append(b, `,"partition":`...)
		b = appendJSONString(b, ev.Partition)
	}
	if len(ev.Fields) > 0 {
		b = append(b, `,"fields":{`...)
		for i, k := range sortedKeys(ev.Fields) {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, k)
			b = append(b, ':')
			b = appendJSONString(b, ev.Fields[k])
		}
		b = append(b, '}')
	}
	b = append(b, `,"prev":`...)
	b = appendJSONString(b, ev.Prev)
	b = append(b, `,"hash":`...)
	b = appendJSONString(b, ev.Hash)
	return append(b, '}')
}

const hexDigits = "0123456789abcdef"

func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// validUTF8 replaces invalid UTF-8 so that the stored JSON decodes to the
// very string that was hashed.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}
