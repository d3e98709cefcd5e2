package acme

import "testing"

// TestNormalizeIdentifierLabels: single-label host names are identifiers
// like any other (the CA's name policy decides); what is not an LDH host
// name is rejectedIdentifier.
func TestNormalizeIdentifierLabels(t *testing.T) {
	for _, v := range []string{"db", "DB", "*.corp", "a-1", "svc.corp"} {
		if _, _, p := normalizeIdentifier(Identifier{Type: "dns", Value: v}); p != nil {
			t.Errorf("%q refused: %s", v, p.Detail)
		}
	}
	for _, v := range []string{"", "-db", "db-", "d_b", "db.", ".db", "*", "*.", "a..b", "10.0.0.1"} {
		if _, _, p := normalizeIdentifier(Identifier{Type: "dns", Value: v}); p == nil || p.Type != ProbRejectedIdentifier {
			t.Errorf("%q accepted, want rejectedIdentifier", v)
		}
	}
}
