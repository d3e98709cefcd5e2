package server

import (
	"context"
	"errors"
	"net/http"
	"time"
)

// EABAdmin manages ACME external account binding keys (RFC 8555 §7.3.4) for
// the admin API; the CLI implements it over the ACME store. A nil EABAdmin
// leaves the EAB routes answering 404.
type EABAdmin interface {
	// Create makes a key and returns its ID and the base64url HMAC key,
	// shown once.
	Create(ctx context.Context, label string) (keyID, hmacKey string, err error)
	List(ctx context.Context) ([]EABKey, error)
	// Revoke refuses further bindings with the key; ErrUnknownEAB if none.
	Revoke(ctx context.Context, keyID string) error
}

// ErrUnknownEAB is returned by EABAdmin.Revoke for an unknown key ID.
var ErrUnknownEAB = errors.New("server: unknown EAB key ID")

// EABKey describes one EAB key without its secret.
type EABKey struct {
	KeyID   string    `json:"key_id"`
	Label   string    `json:"label,omitempty"`
	Created time.Time `json:"created"`
	Revoked bool      `json:"revoked"`
	Account string    `json:"account,omitempty"`
}

// EABCreateRequest is the body of POST /admin/acme/eab.
type EABCreateRequest struct {
	Label string `json:"label,omitempty"`
}

// EABCreated answers POST /admin/acme/eab: the HMAC key appears only here.
type EABCreated struct {
	KeyID   string `json:"key_id"`
	HMACKey string `json:"hmac_key"`
}

// EABRevokeRequest is the body of POST /admin/acme/eab/revoke.
type EABRevokeRequest struct {
	KeyID string `json:"key_id"`
}

func (s *Server) eabRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /admin/acme/eab", s.handleEABCreate)
	mux.HandleFunc("GET /admin/acme/eab", s.handleEABList)
	mux.HandleFunc("POST /admin/acme/eab/revoke", s.handleEABRevoke)
}

func (s *Server) eab(w http.ResponseWriter) EABAdmin {
	if s.d.EAB == nil {
		writeProblem(w, problemf(http.StatusNotFound, ProbNotFound, "this server has no ACME external account binding"))
		return nil
	}
	return s.d.EAB
}

func (s *Server) handleEABCreate(w http.ResponseWriter, r *http.Request) {
	e := s.eab(w)
	if e == nil {
		return
	}
	var req EABCreateRequest
	if p := s.decodeBody(w, r, &req); p != nil {
		writeProblem(w, p)
		return
	}
	id, key, err := e.Create(r.Context(), req.Label)
	if err != nil {
		s.log.Error("server: EAB create", "err", err)
		writeProblem(w, problemf(http.StatusInternalServerError, ProbInternal, "creating the EAB key failed"))
		return
	}
	s.log.Info("server: EAB key created", "key_id", id, "label", req.Label)
	writeJSON(w, http.StatusCreated, EABCreated{KeyID: id, HMACKey: key})
}

func (s *Server) handleEABList(w http.ResponseWriter, r *http.Request) {
	e := s.eab(w)
	if e == nil {
		return
	}
	keys, err := e.List(r.Context())
	if err != nil {
		s.log.Error("server: EAB list", "err", err)
		writeProblem(w, problemf(http.StatusInternalServerError, ProbInternal, "listing EAB keys failed"))
		return
	}
	if keys == nil {
		keys = []EABKey{}
	}
	writeJSON(w, http.StatusOK, keys)
}

func (s *Server) handleEABRevoke(w http.ResponseWriter, r *http.Request) {
	e := s.eab(w)
	if e == nil {
		return
	}
	var req EABRevokeRequest
	if p := s.decodeBody(w, r, &req); p != nil {
		writeProblem(w, p)
		return
	}
	if err := e.Revoke(r.Context(), req.KeyID); err != nil {
		if errors.Is(err, ErrUnknownEAB) {
			writeProblem(w, problemf(http.StatusNotFound, ProbNotFound, "no EAB key %q", req.KeyID))
			return
		}
		s.log.Error("server: EAB revoke", "err", err)
		writeProblem(w, problemf(http.StatusInternalServerError, ProbInternal, "revoking the EAB key failed"))
		return
	}
	s.log.Info("server: EAB key revoked", "key_id", req.KeyID)
	w.WriteHeader(http.StatusNoContent)
}
