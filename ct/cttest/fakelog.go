package cttest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Mode selects how a FakeLog behaves.
type Mode int

// Fake log behaviours.
const (
	OK       Mode = iota // signs a valid SCT
	Hang                 // never answers; waits for the client to give up
	BadSig               // signs the wrong input
	Fail500              // answers 500 to the first Fail500Count requests (all if negative)
	Refuse               // answers 400: chain refused
	WrongKey             // signs with a key other than the one it advertises
	TooMany              // answers 429 with Retry-After: RetryAfter to the first request
	Garbage              // answers 200 with a body that is not an SCT
	Huge                 // answers 200 with a 1 MiB body
)

// FakeLog is an RFC 6962 log's add-pre-chain endpoint on 127.0.0.1 that
// really signs SCTs with its own ECDSA P-256 key over the precertificate
// signature input (section 3.2). Set the exported knobs before the first
// request.
type FakeLog struct {
	URL string            // submission prefix
	Key *ecdsa.PrivateKey // the log's signing key
	ID  [32]byte          // the log ID (SHA-256 of the DER public key)

	Fail500Count int      // for Fail500
	Ext          []byte   // CtExtensions to put in SCTs
	After        *FakeLog // answer only once this log has seen a request
	RetryAfter   string   // Retry-After of TooMany

	mode     Mode
	calls    atomic.Int32
	canceled atomic.Int32
	release  chan struct{}
	once     sync.Once
	srv      *httptest.Server
}

// NewFakeLog starts a fake log that behaves as mode; t's cleanup stops it.
func NewFakeLog(t testing.TB, mode Mode) *FakeLog {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f := &FakeLog{Key: key, mode: mode, release: make(chan struct{})}
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	f.ID = sha256.Sum256(der)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.srv = &httptest.Server{Listener: ln, Config: &http.Server{Handler: f}}
	f.srv.Start()
	f.URL = f.srv.URL
	t.Cleanup(f.Close)
	return f
}

// Close stops the log (releasing hung requests). Later requests are
// refused at the TCP level.
func (f *FakeLog) Close() {
	f.once.Do(func() { close(f.release) })
	f.srv.Close()
}

// Calls is how many add-pre-chain requests the log has seen.
func (f *FakeLog) Calls() int { return int(f.calls.Load()) }

// Canceled is how many hung requests saw their client go away.
func (f *FakeLog) Canceled() int { return int(f.canceled.Load()) }

// PublicKeyPEM is the log's public key as a PEM "PUBLIC KEY" block.
func (f *FakeLog) PublicKeyPEM() string { return PublicKeyPEM(f.Key.Public()) }

// PublicKeyPEM encodes pub as a PEM "PUBLIC KEY" block.
func PublicKeyPEM(pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		panic("cttest: " + err.Error())
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// ServeHTTP implements add-pre-chain (RFC 6962 section 4.1).
func (f *FakeLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/ct/v1/add-pre-chain" {
		http.NotFound(w, r)
		return
	}
	n := int(f.calls.Add(1))
	if f.After != nil {
		deadline := time.Now().Add(10 * time.Second)
		for f.After.calls.Load() == 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	switch f.mode {
	case Hang:
		// The server notices a client going away only once the body is read.
		io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
			f.canceled.Add(1)
		case <-f.release:
		case <-time.After(time.Minute):
		}
		return
	case Fail500:
		if f.Fail500Count < 0 || n <= f.Fail500Count {
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
	case TooMany:
		if n == 1 {
			w.Header().Set("Retry-After", f.RetryAfter)
			http.Error(w, "slow down", http.StatusTooManyRequests)
			return
		}
	case Garbage:
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"sct_version":0,"id":"AAAA","signature":"AAAA"}`))
		return
	case Huge:
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"sct_version":0,`))
		w.Write(bytes.Repeat([]byte(" "), 1<<20))
		w.Write([]byte(`}`))
		return
	case Refuse:
		http.Error(w, "chain does not end in an accepted root", http.StatusBadRequest)
		return
	}
	var req struct {
		Chain [][]byte `json:"chain"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Chain) < 2 {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	pre, err1 := x509.ParseCertificate(req.Chain[0])
	iss, err2 := x509.ParseCertificate(req.Chain[1])
	if err1 != nil || err2 != nil || pre.CheckSignatureFrom(iss) != nil {
		http.Error(w, "bad chain", http.StatusBadRequest)
		return
	}
	tbs, err := stripPoison(pre.RawTBSCertificate)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ts := uint64(time.Now().UnixMilli())
	input := precertSignatureInput(ts, sha256.Sum256(iss.RawSubjectPublicKeyInfo), tbs, f.Ext)
	signer := f.Key
	switch f.mode {
	case BadSig:
		input = precertSignatureInput(ts+1, sha256.Sum256(iss.RawSubjectPublicKeyInfo), tbs, f.Ext)
	case WrongKey:
		other, _ := ecdsa.GenerateKey(f.Key.Curve, rand.Reader)
		signer = other
	}
	h := sha256.Sum256(input)
	sig, err := ecdsa.SignASN1(rand.Reader, signer, h[:])
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	// DigitallySigned: hash sha256(4), signature ecdsa(3), opaque<0..2^16-1>.
	ds := append([]byte{4, 3, byte(len(sig) >> 8), byte(len(sig))}, sig...)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"sct_version": 0,
		"id":          f.ID[:],
		"timestamp":   ts,
		"extensions":  f.Ext,
		"signature":   ds,
	})
}

// precertSignatureInput is RFC 6962 section 3.2's digitally-signed struct
// for a precert_entry.
func precertSignatureInput(ts uint64, issuerKeyHash [32]byte, tbs, ext []byte) []byte {
	b := []byte{0, 0} // v1, certificate_timestamp
	b = binary.BigEndian.AppendUint64(b, ts)
	b = append(b, 0, 1) // precert_entry
	b = append(b, issuerKeyHash[:]...)
	b = append(b, byte(len(tbs)>>16), byte(len(tbs)>>8), byte(len(tbs)))
	b = append(b, tbs...)
	b = append(b, byte(len(ext)>>8), byte(len(ext)))
	return append(b, ext...)
}

var oidPoison = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 11129, 2, 4, 3}

// stripPoison re-encodes a TBSCertificate without the poison extension.
func stripPoison(tbs []byte) ([]byte, error) {
	in := cryptobyte.String(tbs)
	var body cryptobyte.String
	if !in.ReadASN1(&body, cbasn1.SEQUENCE) || !in.Empty() {
		return nil, errors.New("tbs: not a SEQUENCE")
	}
	var out cryptobyte.Builder
	found := false
	out.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		for !body.Empty() {
			var elem cryptobyte.String
			var tag cbasn1.Tag
			if !body.ReadAnyASN1Element(&elem, &tag) {
				b.SetError(errors.New("tbs: bad element"))
				return
			}
			if tag != cbasn1.Tag(3).Constructed().ContextSpecific() {
				b.AddBytes(elem)
				continue
			}
			var wrapped, exts cryptobyte.String
			if !elem.ReadASN1(&wrapped, tag) || !wrapped.ReadASN1(&exts, cbasn1.SEQUENCE) {
				b.SetError(errors.New("tbs: bad extensions"))
				return
			}
			b.AddASN1(tag, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					for !exts.Empty() {
						var ext, e cryptobyte.String
						var oid asn1.ObjectIdentifier
						if !exts.ReadASN1Element(&ext, cbasn1.SEQUENCE) {
							b.SetError(errors.New("tbs: bad extension"))
							return
						}
						e = ext
						if !e.ReadASN1(&e, cbasn1.SEQUENCE) || !e.ReadASN1ObjectIdentifier(&oid) {
							b.SetError(errors.New("tbs: bad extension"))
							return
						}
						if oid.Equal(oidPoison) {
							found = true
							continue
						}
						b.AddBytes(ext)
					}
				})
			})
		}
	})
	res, err := out.Bytes()
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("tbs: no poison extension")
	}
	return res, nil
}
