package acme

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/mail"
	"strings"

	jose "github.com/go-jose/go-jose/v4"
)

type accountJSON struct {
	Status               string          `json:"status"`
	Contact              []string        `json:"contact,omitempty"`
	TermsOfServiceAgreed bool            `json:"termsOfServiceAgreed,omitempty"`
	Orders               string          `json:"orders"`
	Key                  json.RawMessage `json:"key,omitempty"`
}

func (s *Server) accountJSON(a *Account) accountJSON {
	return accountJSON{Status: a.Status, Contact: a.Contact, TermsOfServiceAgreed: a.ToSAgreed,
		Orders: s.url(pAcct + a.ID + "/orders"), Key: a.Key}
}

type newAccountReq struct {
	Contact                []string        `json:"contact"`
	TermsOfServiceAgreed   bool            `json:"termsOfServiceAgreed"`
	OnlyReturnExisting     bool            `json:"onlyReturnExisting"`
	ExternalAccountBinding json.RawMessage `json:"externalAccountBinding"`
}

func checkContacts(cs []string) *Problem {
	if len(cs) > 10 {
		return prob(ProbInvalidContact, 400, "too many contacts")
	}
	for _, c := range cs {
		addr, ok := strings.CutPrefix(c, "mailto:")
		if !ok {
			return prob(ProbUnsupportedContact, 400, "only mailto: contacts are supported")
		}
		a, err := mail.ParseAddress(addr)
		if err != nil || a.Address != addr || strings.ContainsAny(addr, ",?") {
			return prob(ProbInvalidContact, 400, "contact "+quoteShort(c)+" is not a valid email address")
		}
	}
	return nil
}

// handleNewAccount implements RFC 8555 §7.3.
func (s *Server) handleNewAccount(w http.ResponseWriter, q *request) *Problem {
	var req newAccountReq
	if p := decodePayload(q.payload, &req); p != nil {
		return p
	}
	ctx := q.r.Context()
	thumb, err := thumbprint(q.jws.jwk)
	if err != nil {
		return prob(ProbBadPublicKey, 400, "cannot compute the key thumbprint")
	}
	existing, err := s.st.GetAccountByKey(ctx, thumb)
	if err == nil {
		if existing.Status != StatusValid {
			// RFC 8555 §7.3.6: no further requests authorized by a
			// deactivated (or revoked) account's key.
			return inactiveAccount(existing)
		}
		return s.writeJSON(w, http.StatusOK, s.url(pAcct+existing.ID), s.accountJSON(existing))
	} else if !errors.Is(err, ErrNotFound) {
		return s.internalErr("account by key", err)
	}
	if req.OnlyReturnExisting {
		return prob(ProbAccountDoesNotExist, 400, "no account exists with this key")
	}
	if s.cfg.TermsOfService != "" && !req.TermsOfServiceAgreed {
		return prob(ProbUserActionRequired, 403, "you must agree to the terms of service at "+s.cfg.TermsOfService)
	}
	if p := checkContacts(req.Contact); p != nil {
		return p
	}
	keyJSON, err := q.jws.jwk.MarshalJSON()
	if err != nil {
		return prob(ProbBadPublicKey, 400, "cannot encode the account key")
	}
	a := &Account{ID: newID(), Key: keyJSON, KeyThumb: thumb, Status: StatusValid,
		Contact: req.Contact, ToSAgreed: req.TermsOfServiceAgreed, Created: s.now().UTC()}
	hasEAB := len(req.ExternalAccountBinding) > 0 && string(req.ExternalAccountBinding) != "null"
	if hasEAB {
		kid, p := s.checkEAB(q, req.ExternalAccountBinding)
		if p != nil {
			return p
		}
		a.EABKeyID = kid
	} else if s.cfg.ExternalAccountRequired {
		return prob(ProbExternalAccountReq, 403, "this server requires an external account binding")
	}
	// The store claims the EAB key in the transaction that creates the
	// account: checkEAB's look at the key cannot stop two registrations
	// that race with it.
	switch err := s.st.CreateAccount(ctx, a); {
	case errors.Is(err, ErrConflict):
		// A concurrent request created it first: answer as for an existing key.
		existing, err := s.st.GetAccountByKey(ctx, thumb)
		if err != nil {
			return s.internalErr("account by key", err)
		}
		if existing.Status != StatusValid {
			return inactiveAccount(existing)
		}
		return s.writeJSON(w, http.StatusOK, s.url(pAcct+existing.ID), s.accountJSON(existing))
	case a.EABKeyID != "" && errors.Is(err, ErrEABBound):
		return eabBound()
	case a.EABKeyID != "" && (errors.Is(err, ErrEABRevoked) || errors.Is(err, ErrNotFound)):
		return eabUnknown()
	case err != nil:
		return s.internalErr("create account", err)
	}
	return s.writeJSON(w, http.StatusCreated, s.url(pAcct+a.ID), s.accountJSON(a))
}

// inactiveAccount answers a request from an account that is not valid:
// 401 for a deactivated one, as RFC 8555 §7.3.6 requires, 403 otherwise.
func inactiveAccount(a *Account) *Problem {
	p := unauthorized("the account is " + a.Status)
	if a.Status == StatusDeactivated {
		p.Status = http.StatusUnauthorized
	}
	return p
}

func eabBound() *Problem {
	return unauthorized("external account binding: the key ID is already bound to another account; each account needs its own EAB key")
}

func eabUnknown() *Problem {
	return unauthorized("external account binding: unknown or revoked key ID")
}

// checkEAB verifies an external account binding (RFC 8555 §7.3.4): a JWS
// MACed with the EAB key whose payload is the account's jwk.
func (s *Server) checkEAB(q *request, raw json.RawMessage) (string, *Problem) {
	bad := func(d string) (string, *Problem) {
		return "", prob(ProbUnauthorized, 403, "external account binding: "+d)
	}
	sig, err := jose.ParseSignedJSON(string(raw), []jose.SignatureAlgorithm{jose.HS256, jose.HS384, jose.HS512})
	if err != nil || len(sig.Signatures) != 1 {
		return "", malformed("external account binding is not a JWS with HS256, HS384 or HS512")
	}
	h := sig.Signatures[0].Protected
	if _, ok := h.ExtraHeaders["crit"]; ok {
		return "", malformed("external account binding: crit is not supported")
	}
	if b64, ok := h.ExtraHeaders["b64"]; ok && b64 != true {
		return "", malformed("external account binding: b64 must be true")
	}
	if h.Nonce != "" {
		return bad("must not have a nonce")
	}
	if u, _ := h.ExtraHeaders["url"].(string); u != q.url {
		return bad("url does not match")
	}
	e, err := s.st.GetEAB(q.r.Context(), h.KeyID)
	if errors.Is(err, ErrNotFound) || (err == nil && e.Revoked) {
		return "", eabUnknown()
	} else if err != nil {
		return "", s.internalErr("get EAB", err)
	}
	payload, err := sig.Verify(e.Key)
	if err != nil {
		return bad("MAC does not verify")
	}
	if e.AccountID != "" {
		// Checked after the MAC, so that only the key's holder learns
		// that it is in use.
		return "", eabBound()
	}
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(payload); err != nil {
		return bad("payload is not a JWK")
	}
	t1, err1 := thumbprint(&k)
	t2, err2 := thumbprint(q.jws.jwk)
	if err1 != nil || err2 != nil || t1 != t2 {
		return bad("payload is not the account key")
	}
	return e.KeyID, nil
}

type accountUpdateReq struct {
	Contact              *[]string `json:"contact"`
	Status               string    `json:"status"`
	TermsOfServiceAgreed bool      `json:"termsOfServiceAgreed"`
}

// handleAccount: POST-as-GET, update and deactivation (RFC 8555 §7.3.2, §7.3.6).
func (s *Server) handleAccount(w http.ResponseWriter, q *request) *Problem {
	id := q.r.PathValue("id")
	if id != q.acct.ID {
		return unauthorized("the account URL does not match the signing account")
	}
	a := q.acct
	if q.postAsGet() {
		return s.writeJSON(w, http.StatusOK, "", s.accountJSON(a))
	}
	var req accountUpdateReq
	if p := decodePayload(q.payload, &req); p != nil {
		return p
	}
	defer s.lock("a" + a.ID)()
	a, err := s.st.GetAccount(q.r.Context(), id)
	if err != nil {
		return s.internalErr("get account", err)
	}
	switch req.Status {
	case "":
	case StatusDeactivated:
		a.Status = StatusDeactivated
	default:
		return malformed("status may only be set to deactivated")
	}
	if req.Contact != nil {
		if p := checkContacts(*req.Contact); p != nil {
			return p
		}
		a.Contact = *req.Contact
	}
	if req.TermsOfServiceAgreed {
		a.ToSAgreed = true
	}
	if err := s.accts.write(a.ID, func() error { return s.st.UpdateAccount(q.r.Context(), a, a.KeyThumb) }); err != nil {
		return s.internalErr("update account", err)
	}
	return s.writeJSON(w, http.StatusOK, "", s.accountJSON(a))
}

// handleKeyChange implements account key rollover (RFC 8555 §7.3.5).
func (s *Server) handleKeyChange(w http.ResponseWriter, q *request) *Problem {
	inner, p := parseJWS(q.payload)
	if p != nil {
		return malformed("inner JWS: " + p.Detail)
	}
	if inner.jwk == nil {
		return malformed("inner JWS must carry the new key as jwk")
	}
	if inner.hdr.Nonce != "" {
		return malformed("inner JWS must not have a nonce")
	}
	if inner.hdr.URL != q.url {
		return malformed("inner JWS url must equal the outer url")
	}
	if !inner.verify(inner.jwk) {
		return malformed("inner JWS signature does not verify with the new key")
	}
	var req struct {
		Account string          `json:"account"`
		OldKey  json.RawMessage `json:"oldKey"`
	}
	if p := decodePayload(inner.payload, &req); p != nil {
		return p
	}
	if req.Account != q.jws.hdr.Kid {
		return unauthorized("inner JWS account does not match the outer kid")
	}
	var old jose.JSONWebKey
	if err := old.UnmarshalJSON(req.OldKey); err != nil {
		return malformed("oldKey is not a JWK")
	}
	oldThumb, err := thumbprint(&old)
	if err != nil || oldThumb != q.acct.KeyThumb {
		return unauthorized("oldKey is not the account's current key")
	}
	newThumb, err := thumbprint(inner.jwk)
	if err != nil {
		return prob(ProbBadPublicKey, 400, "cannot compute the new key's thumbprint")
	}
	ctx := q.r.Context()
	if other, err := s.st.GetAccountByKey(ctx, newThumb); err == nil {
		w.Header().Set("Location", s.url(pAcct+other.ID))
		return prob(ProbMalformed, 409, "the new key is already in use by an account")
	}
	keyJSON, err := inner.jwk.MarshalJSON()
	if err != nil {
		return prob(ProbBadPublicKey, 400, "cannot encode the new key")
	}
	defer s.lock("a" + q.acct.ID)()
	a, err := s.st.GetAccount(ctx, q.acct.ID)
	if err != nil {
		return s.internalErr("get account", err)
	}
	if a.KeyThumb != oldThumb {
		return unauthorized("the account key changed concurrently")
	}
	a.Key, a.KeyThumb = keyJSON, newThumb
	if err := s.accts.write(a.ID, func() error { return s.st.UpdateAccount(ctx, a, oldThumb) }); errors.Is(err, ErrConflict) {
		return prob(ProbMalformed, 409, "the new key is already in use by an account")
	} else if err != nil {
		return s.internalErr("update account key", err)
	}
	return s.writeJSON(w, http.StatusOK, "", s.accountJSON(a))
}

// handleOrders lists the account's orders, 100 per page with Link rel="next"
// (RFC 8555 §7.1.2.1).
func (s *Server) handleOrders(w http.ResponseWriter, q *request) *Problem {
	if q.r.PathValue("id") != q.acct.ID {
		return unauthorized("the orders URL belongs to another account")
	}
	if !q.postAsGet() {
		return malformed("the orders list takes POST-as-GET")
	}
	cursor := q.r.URL.Query().Get("cursor")
	ids, next, err := s.st.ListOrders(q.r.Context(), q.acct.ID, cursor, 100)
	if err != nil {
		return s.internalErr("list orders", err)
	}
	urls := make([]string, len(ids))
	for i, id := range ids {
		urls[i] = s.url(pOrder + id)
	}
	if next != "" {
		w.Header().Add("Link", `<`+s.url(pAcct+q.acct.ID+"/orders?cursor="+next)+`>;rel="next"`)
	}
	return s.writeJSON(w, http.StatusOK, "", struct {
		Orders []string `json:"orders"`
	}{urls})
}
