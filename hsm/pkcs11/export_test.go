//go:build cgo

package pkcs11

import (
	"errors"

	"github.com/ThalesGroup/crypto11"
)

// Test hooks. Tests use them to act as an outside observer of the token
// (pkcs11-tool needs the PIN to list private objects) and to produce faults
// the real token cannot produce on demand.

// testPIN returns a copy of the token PIN while the partition is active.
func (p *Partition) testPIN() (string, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.ctx == nil {
		return "", errors.New("sealed")
	}
	return string(p.pin), nil
}

// testDirectSigner returns the crypto11 signer that the partition's Signer
// wraps, for benchmarks that compare the two on the same key.
func (p *Partition) testDirectSigner(idOrLabel string) (crypto11.Signer, error) {
	rec, err := p.record(idOrLabel)
	if err != nil {
		return nil, err
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.ctx == nil {
		return nil, errors.New("sealed")
	}
	return p.tokenSigner(rec)
}

// testDropSessions closes every session of this process on the partition's
// token (C_CloseAllSessions), as a token restart does: the handles crypto11
// holds become invalid and the login state is gone.
func (p *Partition) testDropSessions() error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.ctx == nil {
		return errors.New("sealed")
	}
	return p.lib.raw.CloseAllSessions(p.slot)
}
