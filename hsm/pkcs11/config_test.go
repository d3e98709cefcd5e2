package pkcs11

import (
	"strings"
	"testing"
)

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"version":1,"module_id":"ab","created":"2026-01-01T00:00:00Z","partitions":[{"name":"p","token_uri":"pkcs11:token=t","policy":"online","threshold":2,"shares":3,"generation":1,"commitments":"AQ==","pin_length":32,"collect_window":0,"max_failures":0,"lockout_duration":0,"created":"2026-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"version":1,"module_id":"ab","partitions":[]}`))
	f.Add([]byte(`{"version":1,"module_id":"ab","partitions":[{"name":"p","token_uri":"pkcs11:%zz"}]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := parseConfig(b)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "hsm/pkcs11: ") {
				t.Fatalf("error without package prefix: %v", err)
			}
			return
		}
		for _, p := range c.Partitions {
			if p.Threshold < 1 || p.Threshold > p.Shares || p.PINLength < minPINLength {
				t.Fatalf("accepted inconsistent partition %+v", p)
			}
		}
	})
}
