package cli

import "testing"

// TestCertListExpiringMustBePositive: `--expiring 0d` or a negative
// duration is a usage error, not a silent "no filter" that lists every
// certificate.
func TestCertListExpiringMustBePositive(t *testing.T) {
	dir := t.TempDir()
	for _, v := range []string{"0d", "0s", "-1h"} {
		mustFail(t, dir, 2, []string{"--expiring " + v, "positive duration"}, "cert", "list", "--expiring", v)
	}
}

// TestCertRevokeRefusesMalformedReason: a reason that only looks like a
// number or a name after stripping separators is refused before anything
// is opened (a typo must not become keyCompromise).
func TestCertRevokeRefusesMalformedReason(t *testing.T) {
	dir := t.TempDir()
	for _, v := range []string{"-1", "1-0", "k_e_y compromise"} {
		mustFail(t, dir, 2, []string{"revocation reason"}, "cert", "revoke", "12ab", "--reason", v)
	}
}
