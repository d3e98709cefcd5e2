package ca_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/hsmca/hsmca/ca"
)

func ocspRequest(t testing.TB, cert, issuer *x509.Certificate) []byte {
	t.Helper()
	der, err := ocsp.CreateRequest(cert, issuer, &ocsp.RequestOptions{Hash: crypto.SHA1})
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestOCSP(t *testing.T) {
	tc := newTestCA(t, baseConfig(), ca.Options{})
	ctx := context.Background()
	issued, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "server"})
	if err != nil {
		t.Fatal(err)
	}
	mustLintClean(t, tc.CA, "server", issued.DER)
	cert, _ := x509.ParseCertificate(issued.DER)
	req := ocspRequest(t, cert, tc.pki.inter)

	check := func(wantStatus int) *ocsp.Response {
		t.Helper()
		der, err := tc.OCSPResponse(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := ocsp.ParseResponseForCert(der, cert, tc.pki.inter)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Status != wantStatus {
			t.Fatalf("status %d, want %d", resp.Status, wantStatus)
		}
		return resp
	}
	check(ocsp.Good)
	calls := tc.signer.calls.Load()
	check(ocsp.Good)
	if tc.signer.calls.Load() != calls {
		t.Error("a repeated OCSP request reached the signer; want the cached response")
	}
	if _, err := tc.Revoke(ctx, issued.Serial, ca.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	resp := check(ocsp.Revoked)
	if resp.RevocationReason != ca.ReasonKeyCompromise {
		t.Errorf("reason %d", resp.RevocationReason)
	}

	// Unknown serial of a known issuer.
	other := *cert
	other.SerialNumber = big.NewInt(12345)
	der, err := tc.OCSPResponse(ctx, ocspRequest(t, &other, tc.pki.inter))
	if err != nil {
		t.Fatal(err)
	}
	// Not on record: the unsigned "unauthorized" answer, and no signature.
	before := tc.signer.calls.Load()
	if !bytes.Equal(der, ocsp.UnauthorizedErrorResponse) {
		t.Errorf("unknown serial: %x, want the unauthorized error response", der)
	}
	if _, err := ocsp.ParseResponse(der, tc.pki.inter); !errors.As(err, new(ocsp.ResponseError)) {
		t.Errorf("unknown serial parses as %v, want an OCSP unauthorized error", err)
	}
	for i := range 5 {
		other.SerialNumber = big.NewInt(int64(20000 + i))
		if _, err := tc.OCSPResponse(ctx, ocspRequest(t, &other, tc.pki.inter)); err != nil {
			t.Fatal(err)
		}
	}
	if n := tc.signer.calls.Load() - before; n != 0 {
		t.Errorf("OCSP requests for serials not on record cost %d signatures", n)
	}
	// Issuer we do not serve.
	if _, err := tc.OCSPResponse(ctx, ocspRequest(t, cert, tc.pki.root)); !errors.Is(err, ca.ErrOCSPUnknownIssuer) {
		t.Errorf("foreign issuer: %v", err)
	}
	for _, bad := range [][]byte{nil, []byte("junk"), req[:len(req)-3]} {
		if _, err := tc.OCSPResponse(ctx, bad); !errors.Is(err, ca.ErrOCSPMalformed) {
			t.Errorf("malformed request: %v", err)
		}
	}
}

func FuzzOCSPRequest(f *testing.F) {
	tc := newTestCA(f, baseConfig(), ca.Options{})
	issued, err := tc.Issue(context.Background(), ca.IssueRequest{CSR: makeCSR(f, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "server"})
	if err != nil {
		f.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(issued.DER)
	f.Add(ocspRequest(f, cert, tc.pki.inter))
	der, _ := ocsp.CreateRequest(cert, tc.pki.inter, &ocsp.RequestOptions{Hash: crypto.SHA256})
	f.Add(der)
	f.Add([]byte{0x30, 0x00})
	f.Add([]byte("junk"))
	f.Fuzz(func(t *testing.T, b []byte) {
		der, err := tc.OCSPResponse(context.Background(), b)
		if err != nil {
			if !errors.Is(err, ca.ErrOCSPMalformed) && !errors.Is(err, ca.ErrOCSPUnknownIssuer) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		if _, err := ocsp.ParseResponse(der, tc.pki.inter); err != nil {
			t.Fatalf("response does not parse: %v", err)
		}
	})
}

func TestOCSPDelegatedResponder(t *testing.T) {
	p := newPKI(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(77), Subject: pkix.Name{CommonName: "hsmca OCSP responder"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(30 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.inter, key.Public(), p.interKey)
	if err != nil {
		t.Fatal(err)
	}
	respCert, _ := x509.ParseCertificate(der)
	st := newMemStore()
	opts := ca.Options{OCSPResponders: map[string]ca.OCSPResponder{"issuing-1": {Cert: respCert, Signer: key}}}
	tc := newTestCAWith(t, baseConfig(), opts, p, st, "")
	ctx := context.Background()
	issued, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "server"})
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(issued.DER)
	calls := tc.signer.calls.Load()
	resp, err := tc.OCSPResponse(ctx, ocspRequest(t, cert, p.inter))
	if err != nil {
		t.Fatal(err)
	}
	if tc.signer.calls.Load() != calls {
		t.Error("the issuer key signed an OCSP response despite a delegated responder")
	}
	r, err := ocsp.ParseResponseForCert(resp, cert, p.inter)
	if err != nil || r.Status != ocsp.Good || r.Certificate == nil || !r.Certificate.Equal(respCert) {
		t.Fatalf("delegated response: %v %v", r, err)
	}
	// A responder without the OCSPSigning EKU is refused.
	bad := ca.Options{OCSPResponders: map[string]ca.OCSPResponder{"issuing-1": {Cert: p.inter, Signer: p.interKey}}}
	if _, err := ca.New(baseConfig(), []ca.Issuer{{Name: "issuing-1", Cert: p.inter, Signer: p.interKey}}, st, bad); err == nil {
		t.Error("New accepted a responder without OCSPSigning")
	}
}
