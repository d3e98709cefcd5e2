package cli

import (
	"crypto"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/ct"
	"github.com/hsmca/hsmca/hsm"
	"github.com/hsmca/hsmca/store"
)

// caSigner adapts a module key to what package ca expects: ca never imports
// hsm, so the module's "sealed" error is re-labelled as ca.ErrSealed (both
// stay matchable with errors.Is).
type caSigner struct {
	crypto.Signer
}

func (s caSigner) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, err := s.Signer.Sign(rand, digest, opts)
	if err != nil && errors.Is(err, hsm.ErrSealed) {
		return nil, fmt.Errorf("%w: %w", ca.ErrSealed, err)
	}
	return sig, err
}

// SyncAudit forwards to the module key (ca.AuditSyncer), so that the CA can
// make its signatures' audit records durable before it hands out what they
// signed; a key without an audit log has nothing to sync.
func (s caSigner) SyncAudit() error { return ca.SyncAudit(s.Signer) }

// caDeps are the optional parts of openCA.
type caDeps struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer // CT metrics; nil: none
	// WrapSigner, if set, wraps each issuer's signer (after the sealed
	// error mapping), e.g. to count signatures per key for /metrics.
	WrapSigner func(issuer string, s crypto.Signer) crypto.Signer
}

// openCA builds the CA that cfg describes: each issuer's certificate from its
// PEM file and its key from the module partition the config names. The
// partitions may be sealed; signatures fail with ca.ErrSealed until they are
// activated.
func openCA(cfg *Config, m hsm.Module, st *store.Store, d caDeps) (*ca.CA, error) {
	if len(cfg.CA.Issuers) == 0 {
		return nil, withHint(errors.New("config: ca.issuers is empty"), "run the root and intermediate ceremonies first (hsmca ceremony run)")
	}
	var issuers []ca.Issuer
	for _, ic := range cfg.CA.Issuers {
		if ic.Partition == "" || ic.Key == "" {
			return nil, fmt.Errorf("config: issuer %s: partition and key are required", ic.Name)
		}
		p, err := m.Partition(ic.Partition)
		if err != nil {
			return nil, fmt.Errorf("issuer %s: partition %s: %w", ic.Name, ic.Partition, err)
		}
		signer, err := p.Signer(ic.Key)
		if err != nil {
			return nil, fmt.Errorf("issuer %s: key %s: %w", ic.Name, ic.Key, err)
		}
		var cs crypto.Signer = caSigner{signer}
		if d.WrapSigner != nil {
			cs = d.WrapSigner(ic.Name, cs)
		}
		iss, err := ca.LoadIssuer(ic, cfg.Dir(), cs)
		if err != nil {
			return nil, err
		}
		issuers = append(issuers, iss)
	}
	opts := ca.Options{Logger: d.Logger}
	if len(cfg.CT.Logs) > 0 || cfg.CT.LogList != "" {
		ctCfg := cfg.CT
		if ctCfg.LogList != "" {
			ctCfg.LogList = cfg.Path(ctCfg.LogList)
		}
		for i := range ctCfg.Logs {
			ctCfg.Logs[i].PublicKey = resolveKeyPath(cfg, ctCfg.Logs[i].PublicKey)
		}
		sub, err := ct.New(ctCfg, ct.Options{Logger: d.Logger, Registerer: d.Registerer})
		if err != nil {
			return nil, err
		}
		opts.SCTs = sub
	}
	return ca.New(cfg.CA, issuers, st, opts)
}

// openStore opens the config's store file.
func openStore(cfg *Config) (*store.Store, error) {
	st, err := store.Open(cfg.Path(cfg.Store))
	if errors.Is(err, store.ErrInUse) {
		return nil, withHint(err, "a running `hsmca ca serve` holds the store; use --server URL or --socket PATH to act through it")
	}
	return st, err
}

// resolveKeyPath makes a CT log key that names a file relative to the config
// file absolute; inline keys (base64 DER or PEM) are left alone.
func resolveKeyPath(cfg *Config, k string) string {
	if k == "" || strings.HasPrefix(k, "-----BEGIN") {
		return k
	}
	if p := cfg.Path(k); fileExists(p) {
		return p
	}
	return k
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
