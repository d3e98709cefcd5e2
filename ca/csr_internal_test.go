package ca

import "testing"

// inetAtonParses follows glibc's inet_aton: 1-4 parts, C integer
// constants, the last part filling the bytes the others leave.
func TestInetAtonParses(t *testing.T) {
	for _, tt := range []struct {
		s    string
		want bool
	}{
		{"10.0.0.1", true},
		{"10.1", true},
		{"010.0.0.1", true},
		{"0xa.0.0.1", true},
		{"0XA.1", true},
		{"1.0xa", true},
		{"0377.0.0.1", true},
		{"1.16777215", true},
		{"1.2.65535", true},
		{"4294967295", true},
		{"0x0000000a.1", true},
		{"00000000010.1", true},
		{"0", true},
		{"1.16777216", false},
		{"1.2.65536", false},
		{"4294967296", false},
		{"256.1", false},
		{"1.2.3.256", false},
		{"1.2.3.4.5", false},
		{"08.1", false},
		{"0x.1", false},
		{"0xg.1", false},
		{"1..2", false},
		{"1.2.", false},
		{"", false},
		{"v1.0", false},
		{"agent-1.2", false},
		{"+1.2", false},
		{"1.-2", false},
	} {
		if got := inetAtonParses(tt.s); got != tt.want {
			t.Errorf("inetAtonParses(%q) = %v, want %v", tt.s, got, tt.want)
		}
	}
}

// TestKeptCNAddressWithTrailingText: glibc's inet_aton stops at the first
// white space, so "10.0.0.1 backup" is an address to it and must not pass
// as free text past the IP policy.
func TestKeptCNAddressWithTrailingText(t *testing.T) {
	for _, cn := range []string{"10.0.0.1 backup", "127.1 (loopback)", "10.1\tlab"} {
		if ids, err := cnNames(cn); err == nil && ids == nil {
			t.Errorf("cnNames(%q): free text, but inet_aton reads it as an address", cn)
		}
	}
	for _, cn := range []string{"Jane Doe", "build 7.1", "v1.0-beta"} {
		if _, err := cnNames(cn); err != nil {
			t.Errorf("cnNames(%q): %v, want free text", cn, err)
		}
	}
}
