package cli

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	xacme "golang.org/x/crypto/acme"

	"github.com/hsmca/hsmca/server"
)

// TestACMEEABThroughServe: `hsmca acme eab create|list|revoke` on a stopped
// CA's store and through a running CA's admin socket; with
// external_account_required, golang.org/x/crypto/acme accounts without a
// binding, or with a revoked one, are refused, and one with a valid binding
// is created. The bound account then rolls its key over and deactivates.
func TestACMEEABThroughServe(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dir, httpsURL, httpURL := stoppedQuickstart(t)
	cfgPath := filepath.Join(dir, "ca.yaml")

	// Local, on the stopped CA's store.
	local := decodeJSON[server.EABCreated](t, mustRun(t, dir, "acme", "eab", "create", "--config", cfgPath, "--label", "offline", "--json"))
	if local.KeyID == "" || local.HMACKey == "" {
		t.Fatalf("eab create: %+v", local)
	}
	if _, err := base64.RawURLEncoding.DecodeString(local.HMACKey); err != nil {
		t.Fatalf("HMAC key is not base64url: %v", err)
	}
	keys := decodeJSON[[]server.EABKey](t, mustRun(t, dir, "acme", "eab", "list", "--config", cfgPath, "--json"))
	if len(keys) != 1 || keys[0].KeyID != local.KeyID || keys[0].Label != "offline" || keys[0].Revoked {
		t.Fatalf("eab list: %+v", keys)
	}
	if r := mustRun(t, dir, "acme", "eab", "list", "--config", cfgPath); bytes.Contains([]byte(r.stdout), []byte(local.HMACKey)) {
		t.Fatal("eab list shows the HMAC key")
	}
	mustFail(t, dir, 2, []string{"EAB key"}, "acme", "eab", "revoke", "nope", "--config", cfgPath)

	// Require EAB and serve.
	editConfig(t, dir, "\nacme:\n", "\nacme:\n  external_account_required: true\n")
	p := startProc(t, dir, "ca", "serve", "--config", cfgPath)
	waitHealth(t, p, httpURL, isSealed)
	sock := filepath.Join(dir, "admin.sock")

	root, err := os.ReadFile(filepath.Join(dir, "root.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(root)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	newClient := func() *xacme.Client {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		return &xacme.Client{Key: k, HTTPClient: hc, DirectoryURL: httpsURL + "/acme/directory"}
	}
	register := func(c *xacme.Client, eab *xacme.ExternalAccountBinding) error {
		_, err := c.Register(ctx, &xacme.Account{ExternalAccountBinding: eab}, xacme.AcceptTOS)
		return err
	}
	problem := func(err error) string {
		var ae *xacme.Error
		if errors.As(err, &ae) {
			return ae.ProblemType
		}
		return ""
	}

	d, err := newClient().Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !d.ExternalAccountRequired {
		t.Fatal("directory meta does not say externalAccountRequired")
	}
	if err := register(newClient(), nil); problem(err) != "urn:ietf:params:acme:error:externalAccountRequired" {
		t.Fatalf("account without EAB: got %v", err)
	}

	// Through the running CA's admin socket.
	live := decodeJSON[server.EABCreated](t, mustRun(t, dir, "acme", "eab", "create", "--socket", sock, "--label", "team-a", "--json"))
	key, err := base64.RawURLEncoding.DecodeString(live.HMACKey)
	if err != nil {
		t.Fatal(err)
	}
	wrong := append([]byte(nil), key...)
	wrong[0] ^= 1
	if err := register(newClient(), &xacme.ExternalAccountBinding{KID: live.KeyID, Key: wrong}); err == nil {
		t.Fatal("an account bound with the wrong HMAC key was created")
	}
	bound := newClient()
	if err := register(bound, &xacme.ExternalAccountBinding{KID: live.KeyID, Key: key}); err != nil {
		t.Fatalf("account with a valid EAB: %v\n%s", err, tail(p.out.String(), 3000))
	}
	keys = decodeJSON[[]server.EABKey](t, mustRun(t, dir, "acme", "eab", "list", "--socket", sock, "--json"))
	var found bool
	for _, k := range keys {
		if k.KeyID == live.KeyID {
			found = k.Account != ""
		}
	}
	if !found {
		t.Fatalf("eab list does not show the binding: %+v", keys)
	}

	mustRun(t, dir, "acme", "eab", "revoke", live.KeyID, "--socket", sock)
	if err := register(newClient(), &xacme.ExternalAccountBinding{KID: live.KeyID, Key: key}); err == nil {
		t.Fatal("an account was bound with a revoked EAB key")
	}
	mustFail(t, dir, 2, []string{"EAB key"}, "acme", "eab", "revoke", "unknown-id", "--socket", sock)

	// The bound account keeps working: key rollover, then deactivation.
	newKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err := bound.AccountKeyRollover(ctx, newKey); err != nil {
		t.Fatalf("key rollover: %v", err)
	}
	if _, err := bound.GetReg(ctx, ""); err != nil {
		t.Fatalf("account after rollover: %v", err)
	}
	if err := bound.DeactivateReg(ctx); err != nil {
		t.Fatalf("deactivate: %v", err)
	}
	if _, err := bound.GetReg(ctx, ""); err == nil {
		t.Fatal("a deactivated account still answers")
	}
}
