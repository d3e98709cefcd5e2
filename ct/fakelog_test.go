package ct

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"encoding/json"
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

// fakeMode selects how a fakeLog misbehaves.
type fakeMode int

const (
	fakeOK       fakeMode = iota
	fakeHang              // never answers; waits for the client to give up
	fakeBadSig            // signs the wrong input
	fake500               // answers 500 to the first fail500 requests (all if <0)
	fakeRefuse            // answers 400: chain refused
	fakeWrongKey          // signs with a key other than the one it advertises
	fake429               // answers 429 with Retry-After: retryAfter to the first request
	fakeGarbage           // answers 200 with a body that is not an SCT
)

// fakeLog is an RFC 6962 log's add-pre-chain endpoint that really signs
// SCTs with its own ECDSA P-256 key over the precertificate signature input
// (section 3.2), built here independently of certificate-transparency-go.
type fakeLog struct {
	key        *ecdsa.PrivateKey
	id         [32]byte
	mode       fakeMode
	fail500    int
	ext        []byte   // CtExtensions to put in SCTs
	after      *fakeLog // answer only once this log has seen a request
	retryAfter string   // Retry-After of fake429

	calls    atomic.Int32
	canceled atomic.Int32 // hung requests whose client went away
	release  chan struct{}
	once     sync.Once
	srv      *httptest.Server
}

func newFakeLog(t testing.TB, mode fakeMode) *fakeLog {
	t.Helper()
	f := &fakeLog{key: newKey(t), mode: mode, release: make(chan struct{})}
	der, err := x509.MarshalPKIXPublicKey(f.key.Public())
	if err != nil {
		t.Fatal(err)
	}
	f.id = sha256.Sum256(der)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.srv = &httptest.Server{Listener: ln, Config: &http.Server{Handler: f}}
	f.srv.Start()
	t.Cleanup(func() {
		f.once.Do(func() { close(f.release) })
		f.srv.Close()
	})
	return f
}

// config is the LogConfig that names this log (key inline as PEM).
func (f *fakeLog) config(t testing.TB, name, operator string) LogConfig {
	return LogConfig{Name: name, URL: f.srv.URL, PublicKey: pubPEM(t, f.key.Public()), Operator: operator}
}

func (f *fakeLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/ct/v1/add-pre-chain" {
		http.NotFound(w, r)
		return
	}
	n := int(f.calls.Add(1))
	if f.after != nil {
		deadline := time.Now().Add(10 * time.Second)
		for f.after.calls.Load() == 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	switch f.mode {
	case fakeHang:
		// The server notices a client going away only once the body is read.
		io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
			f.canceled.Add(1)
		case <-f.release:
		case <-time.After(time.Minute):
		}
		return
	case fake500:
		if f.fail500 < 0 || n <= f.fail500 {
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
	case fake429:
		if n == 1 {
			w.Header().Set("Retry-After", f.retryAfter)
			http.Error(w, "slow down", http.StatusTooManyRequests)
			return
		}
	case fakeGarbage:
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"sct_version":0,"id":"AAAA","signature":"AAAA"}`))
		return
	case fakeRefuse:
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
	input := precertSignatureInput(ts, sha256.Sum256(iss.RawSubjectPublicKeyInfo), tbs, f.ext)
	signer := f.key
	switch f.mode {
	case fakeBadSig:
		input = precertSignatureInput(ts+1, sha256.Sum256(iss.RawSubjectPublicKeyInfo), tbs, f.ext)
	case fakeWrongKey:
		other, _ := ecdsa.GenerateKey(f.key.Curve, rand.Reader)
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
		"id":          f.id[:],
		"timestamp":   ts,
		"extensions":  f.ext,
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

var oidPoisonTest = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 11129, 2, 4, 3}

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
						if oid.Equal(oidPoisonTest) {
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
