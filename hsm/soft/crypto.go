package soft

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The key hierarchy of a partition (DESIGN.md §2):
//
//	secret (recovered from M shares, never stored)
//	  └─ HKDF-SHA256(salt, module|partition|generation) → KEK
//	       ├─ HMAC-SHA256(KEK, "kcv") → key check value, stored
//	       └─ AES-256-GCM → the partition's master key (random, 32 bytes), stored wrapped
//	            ├─ HKDF-SHA256(info=key ID) → per-key wrapping key
//	            │    └─ AES-256-GCM(PKCS#8 key, AD = ID and attributes)
//	            └─ HKDF-SHA256(info=partition) → transport wrapping key
//	                 └─ AES-256-GCM(age X25519 identity)
//
// A re-share replaces the master key too: PrepareReshare makes a new one
// and wraps it and the transport identity under the KEK of the new secret,
// and Commit re-wraps every key of the partition under it in the same
// transaction that stores the new generation. So the previous shares,
// together with a copy of module.db made before the re-share (a backup, a
// disk image), recover only the previous master key: they open the keys
// that copy holds, as they were, and nothing stored after it.

const (
	keySize   = 32
	nonceSize = 12
	kcvSize   = 16
)

var (
	errWrongSecret = errors.New("the recovered secret does not open this partition (key check value mismatch)")
	errUnwrap      = errors.New("authentication failed: stored record altered or corrupt")
)

// lp appends length-prefixed strings, an unambiguous encoding for
// derivation inputs and associated data.
func lp(b []byte, ss ...string) []byte {
	for _, s := range ss {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	return b
}

func deriveKEK(secret, salt []byte, module, partition string, generation int) ([]byte, error) {
	info := lp([]byte("hsmca soft kek v1"), module, partition, fmt.Sprint(generation))
	return hkdf.Key(sha256.New, secret, salt, string(info), keySize)
}

func keyCheckValue(kek []byte) []byte {
	m := hmac.New(sha256.New, kek)
	m.Write([]byte("hsmca soft kcv v1"))
	return m.Sum(nil)[:kcvSize]
}

func checkKCV(kek, stored []byte) error {
	if subtle.ConstantTimeCompare(keyCheckValue(kek), stored) != 1 {
		return errWrongSecret
	}
	return nil
}

func keyWrappingKey(master []byte, keyID string) ([]byte, error) {
	return hkdf.Key(sha256.New, master, nil, string(lp([]byte("hsmca soft key v1"), keyID)), keySize)
}

func transportWrappingKey(master []byte, partition string) ([]byte, error) {
	return hkdf.Key(sha256.New, master, nil, string(lp([]byte("hsmca soft transport v1"), partition)), keySize)
}

// seal encrypts plaintext with AES-256-GCM under key, returning
// nonce||ciphertext.
func seal(rnd io.Reader, key, plaintext, ad []byte) ([]byte, error) {
	aead, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, nonceSize, nonceSize+len(plaintext)+aead.Overhead())
	if _, err := io.ReadFull(rnd, nonce); err != nil {
		return nil, fmt.Errorf("soft: random nonce: %w", err)
	}
	return aead.Seal(nonce, nonce, plaintext, ad), nil
}

func open(key, sealed, ad []byte) ([]byte, error) {
	aead, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	if len(sealed) < nonceSize+aead.Overhead() {
		return nil, errUnwrap
	}
	pt, err := aead.Open(nil, sealed[:nonceSize], sealed[nonceSize:], ad)
	if err != nil {
		return nil, errUnwrap
	}
	return pt, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("soft: %w", err)
	}
	return cipher.NewGCM(block)
}
