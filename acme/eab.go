package acme

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"time"
)

// CreateEAB makes a new external account binding key (RFC 8555 §7.3.4) and
// stores it. It returns the key ID and the HMAC key, base64url without
// padding, as clients (certbot --eab-hmac-key, lego --eab.hmac) take it.
// The key is shown once; hand it to the account holder over a safe channel.
func CreateEAB(ctx context.Context, st Store, label string) (keyID, hmacKey string, err error) {
	key := make([]byte, 32)
	rand.Read(key)
	e := &EAB{KeyID: newEABKeyID(), Key: key, Label: label, Created: time.Now().UTC()}
	if err := st.PutEAB(ctx, e); err != nil {
		return "", "", fmt.Errorf("acme: store EAB key: %w", err)
	}
	return e.KeyID, base64.RawURLEncoding.EncodeToString(key), nil
}

// newEABKeyID draws a key ID: 12 random bytes, base64url. One that would
// start with "-" is drawn again, so that `hsmca acme eab revoke KEYID`
// never reads it as a flag.
func newEABKeyID() string {
	for {
		var id [12]byte
		rand.Read(id[:])
		if s := base64.RawURLEncoding.EncodeToString(id[:]); s[0] != '-' {
			return s
		}
	}
}

// EABInfo is what ListEAB tells about a key (never the key itself).
type EABInfo struct {
	KeyID     string    `json:"key_id"`
	Label     string    `json:"label,omitempty"`
	Created   time.Time `json:"created"`
	Revoked   bool      `json:"revoked"`
	AccountID string    `json:"account_id,omitempty"`
}

// ListEAB lists the EAB keys without their secrets.
func ListEAB(ctx context.Context, st Store) ([]EABInfo, error) {
	es, err := st.ListEAB(ctx)
	if err != nil {
		return nil, fmt.Errorf("acme: list EAB keys: %w", err)
	}
	out := make([]EABInfo, len(es))
	for i, e := range es {
		out[i] = EABInfo{KeyID: e.KeyID, Label: e.Label, Created: e.Created, Revoked: e.Revoked, AccountID: e.AccountID}
	}
	return out, nil
}

// RevokeEAB revokes a key: no new account can bind with it. Accounts
// already bound stay valid.
func RevokeEAB(ctx context.Context, st Store, keyID string) error {
	err := st.RevokeEAB(ctx, keyID)
	if errors.Is(err, ErrNotFound) {
		return fmt.Errorf("acme: no EAB key %q: %w", keyID, ErrNotFound)
	} else if err != nil {
		return fmt.Errorf("acme: revoke EAB key: %w", err)
	}
	return nil
}
