package cli

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
)

// writeJSON prints v as indented JSON followed by a newline: the --json
// output of status, list and verify commands, meant for scripts.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// newTable returns a tabwriter for aligned, human-readable columns; callers
// must Flush it.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
}

// publicKeyPEM encodes pub as a PEM "PUBLIC KEY" block (PKIX,
// RFC 5280 SubjectPublicKeyInfo).
func publicKeyPEM(pub crypto.PublicKey) (string, error) {
	if pub == nil {
		return "", errors.New("no public key")
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("encode public key: %w", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), nil
}

// writeNewFile writes data to path with mode 0600, refusing to overwrite an
// existing file. Files written by the hsm commands (shares, wrapped keys) go
// to people or other modules; they are never replaced silently.
func writeNewFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return withHint(fmt.Errorf("%s already exists; refusing to overwrite it", path), "choose another output path or move the existing file away")
		}
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// prepareOutDir creates dir (0700) if needed and checks that none of names
// exists in it yet, so that a command fails before it changes the module
// rather than after.
func prepareOutDir(dir string, names []string) ([]string, error) {
	if dir == "" {
		return nil, usagef("--out DIR is required")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create output directory: %w", err)
	}
	paths := make([]string, len(names))
	for i, n := range names {
		paths[i] = filepath.Join(dir, n)
		if _, err := os.Lstat(paths[i]); err == nil {
			return nil, withHint(fmt.Errorf("%s already exists; refusing to overwrite a share file", paths[i]),
				"use an empty --out directory")
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	return paths, nil
}
