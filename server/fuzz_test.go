package server

import (
	"encoding/base64"
	"testing"

	"github.com/hsmca/hsmca/ca"
)

// FuzzDecodeJSON feeds the admin API's body parser.
func FuzzDecodeJSON(f *testing.F) {
	for _, s := range []string{
		`{"csr":"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n","profile":"server"}`,
		`{"serial":"0a:bc","reason":"keyCompromise"}`,
		`{"share":"hsmca-share ..."}`,
		`{"csr":1}`, `{}{}`, `[`, ``, `{"issuer":"x","evil":true}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var ir IssueRequest
		_ = DecodeJSON(b, &ir)
		if _, err := ParseCSRPEM([]byte(ir.CSR)); err == nil {
			_, _ = ca.ParseCSR([]byte(ir.CSR))
		}
		var rr RevokeRequest
		if DecodeJSON(b, &rr) == nil {
			_, _ = ca.ParseSerial(rr.Serial)
			_, _ = ca.ParseReason(rr.Reason)
		}
		var ar ActivateRequest
		_ = DecodeJSON(b, &ar)
	})
}

// FuzzOCSPRequest feeds the OCSP GET path decoder and the request parser
// the server keys its fallback cache with.
func FuzzOCSPRequest(f *testing.F) {
	seed := []byte{0x30, 0x42, 0x30, 0x40, 0x30, 0x3e, 0x30, 0x3c, 0x30, 0x3a, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00}
	f.Add(base64.StdEncoding.EncodeToString(seed))
	f.Add("MEIwQDA%2BMDwwOjAJBgUrDgMCGgUABBQ")
	f.Add("%zz")
	f.Add("")
	f.Add("////")
	f.Fuzz(func(t *testing.T, path string) {
		der, err := decodeOCSPPath(path)
		if err != nil {
			return
		}
		_, _, _ = ocspReqKey(der)
	})
}
