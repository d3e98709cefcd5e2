package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/hsm"
	"github.com/hsmca/hsmca/server"
)

// adminTarget selects a running CA's admin API instead of local module and
// store files: --server URL (mutual TLS with an operator certificate) or
// --socket PATH (the local unix socket).
type adminTarget struct {
	server     string
	socket     string
	clientCert string
	clientKey  string
	caCert     string
}

// addAdminFlags registers the flags that point a command at a running CA.
func addAdminFlags(cmd *cobra.Command, t *adminTarget) {
	cmd.Flags().StringVar(&t.server, "server", "", "act on a running CA at `URL` (https://HOST:PORT) through its admin API (mutual TLS)")
	cmd.Flags().StringVar(&t.socket, "socket", "", "act on a running CA through its admin unix socket `PATH`")
	cmd.Flags().StringVar(&t.clientCert, "client-cert", "", "with --server: operator certificate `FILE` (PEM, with its chain)")
	cmd.Flags().StringVar(&t.clientKey, "client-key", "", "with --server: operator key `FILE` (PEM)")
	cmd.Flags().StringVar(&t.caCert, "ca-cert", "", "with --server: CA certificate `FILE` that the server's TLS certificate chains to (default: system roots)")
}

// remote reports whether the command acts on a running CA.
func (t *adminTarget) remote() bool { return t.server != "" || t.socket != "" }

// adminClient talks to the admin API.
type adminClient struct {
	base string
	hc   *http.Client
	what string // for messages: the URL or socket path
}

const adminTimeout = 2 * time.Minute

func (t *adminTarget) client() (*adminClient, error) {
	switch {
	case t.server != "" && t.socket != "":
		return nil, usagef("give --server or --socket, not both")
	case t.socket != "":
		if t.clientCert != "" || t.clientKey != "" || t.caCert != "" {
			return nil, usagef("--client-cert, --client-key and --ca-cert apply to --server only")
		}
		path := t.socket
		tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}}
		return &adminClient{base: "http://hsmca-admin", hc: &http.Client{Transport: tr, Timeout: adminTimeout}, what: path}, nil
	}
	u, err := url.Parse(t.server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, usagef("--server %q: want https://HOST:PORT", t.server)
	}
	if t.clientCert == "" || t.clientKey == "" {
		return nil, withHint(usagef("--server needs --client-cert and --client-key (an operator certificate)"),
			"quickstart writes operator.pem and operator.key; or use --socket PATH on the CA's machine")
	}
	cert, err := tls.LoadX509KeyPair(t.clientCert, t.clientKey)
	if err != nil {
		return nil, fmt.Errorf("operator certificate %s: %w", t.clientCert, err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if t.caCert != "" {
		b, err := os.ReadFile(t.caCert)
		if err != nil {
			return nil, fmt.Errorf("--ca-cert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, usagef("--ca-cert %s holds no PEM certificate", t.caCert)
		}
		tc.RootCAs = pool
	}
	base := strings.TrimRight(u.Scheme+"://"+u.Host, "/")
	return &adminClient{base: base, hc: &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: adminTimeout}, what: base}, nil
}

// do sends one request; a problem document becomes an error (with a hint
// for a sealed CA), any other answer is decoded into out.
func (c *adminClient) do(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return withHint(fmt.Errorf("admin API %s: %w", c.what, err), connectHint(err))
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("admin API %s: %w", c.what, err)
	}
	if resp.StatusCode >= 400 {
		var p server.Problem
		if json.Unmarshal(raw, &p) != nil || p.Type == "" {
			return fmt.Errorf("admin API %s: %s %s: HTTP %d", c.what, method, path, resp.StatusCode)
		}
		var err error = fmt.Errorf("server: %w", &p)
		if resp.StatusCode == http.StatusUnauthorized || p.Type == server.ProbUnauthorized {
			err = withHint(err, "--client-cert and --client-key must be an operator certificate of this CA that it has not revoked (profile operator; quickstart writes DIR/operator.pem and DIR/operator.key)")
		}
		switch {
		case p.Type == server.ProbUnavailable:
			return withHint(err, "custodians present their shares with `hsmca hsm activate --server URL|--socket PATH --share FILE`")
		case resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusForbidden ||
			resp.StatusCode == http.StatusUnprocessableEntity || resp.StatusCode == http.StatusNotFound:
			return usageError{err}
		}
		return err
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("admin API %s: bad answer: %w", c.what, err)
		}
	}
	return nil
}

// connectHint says what to do about an admin API request that got no
// answer: a TLS certificate that does not verify on either side is not a
// server that is down.
func connectHint(err error) string {
	var (
		unknownCA x509.UnknownAuthorityError
		verify    *tls.CertificateVerificationError
		host      x509.HostnameError
		op        *net.OpError
	)
	switch {
	case errors.As(err, &host):
		return "--server must name a host or IP address that the server's TLS certificate is for (server.tls_cert in ca.yaml)"
	case errors.As(err, &unknownCA):
		return "pass --ca-cert FILE with the CA's root certificate (quickstart: DIR/root.pem) so that the server's TLS certificate verifies"
	case errors.As(err, &verify):
		return "the server's TLS certificate does not verify (expired, not yet valid, or not for serving TLS); renew server.tls_cert, or check --ca-cert"
	case errors.As(err, &op) && op.Op == "remote error":
		return "the server refused the TLS handshake: --client-cert and --client-key must be an operator certificate of this CA (profile operator; quickstart writes DIR/operator.pem and DIR/operator.key)"
	}
	return "is `hsmca ca serve` running there? the admin API needs an operator certificate over --server or the local --socket"
}

// ---- hsm ----

// checkRemotePartition refuses a --partition that is not the partition
// the running CA at c uses: the admin API acts on that one partition
// (server.issuing_partition) only, so another name would be ignored and,
// for seal, the wrong partition sealed.
func checkRemotePartition(c *adminClient, partition string) error {
	if partition == "" {
		return nil
	}
	var q server.QuorumStatus
	if err := c.do("GET", "/admin/hsm/status", nil, &q); err != nil {
		return err
	}
	if q.Partition != partition {
		return withHint(usagef("the running CA at %s uses partition %s, not %s", c.what, q.Partition, partition),
			"with --socket or --server leave out --partition; other partitions are reached on the module directory (--module DIR) while no process holds it")
	}
	return nil
}

func remoteStatus(e *env, t *adminTarget, partition string, asJSON bool) error {
	c, err := t.client()
	if err != nil {
		return err
	}
	if err := checkRemotePartition(c, partition); err != nil {
		return err
	}
	var q server.QuorumStatus
	if err := c.do("GET", "/admin/hsm/status", nil, &q); err != nil {
		return err
	}
	if asJSON {
		return writeJSON(e.stdout, q)
	}
	fmt.Fprintf(e.stdout, "running CA %s: partition %s is %s (%d of %d shares presented, N=%d)\n", c.what, q.Partition, q.State, q.Presented, q.Threshold, q.Shares)
	if !q.LockedUntil.IsZero() && q.LockedUntil.After(time.Now()) {
		fmt.Fprintf(e.stdout, "locked until %s after repeated bad shares\n", q.LockedUntil.UTC().Format(time.RFC3339))
	}
	return nil
}

// remoteActivate presents each share file to the running CA. Age-encrypted
// shares are decrypted here with the custodian's identity; only the share's
// text form travels, over mutual TLS or the local socket.
func remoteActivate(e *env, t *adminTarget, partition string, q quorumFlags) error {
	if len(q.shares) == 0 {
		return usagef("--share FILE is required with --server or --socket")
	}
	c, err := t.client()
	if err != nil {
		return err
	}
	if err := checkRemotePartition(c, partition); err != nil {
		return err
	}
	ids, err := loadIdentities(q.identities)
	if err != nil {
		return err
	}
	for _, path := range q.shares {
		s, err := readShareFile(e, path, ids)
		if err != nil {
			return err
		}
		var st server.QuorumStatus
		if err := c.do("POST", "/admin/hsm/activate", server.ActivateRequest{Share: hsm.EncodeText(s)}, &st); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		fmt.Fprintf(e.stderr, "share %d of %d accepted (%s)\n", st.Presented, st.Threshold, path)
		if st.Active() {
			fmt.Fprintf(e.stdout, "partition %s of %s is active\n", st.Partition, c.what)
			return nil
		}
	}
	var st server.QuorumStatus
	if err := c.do("GET", "/admin/hsm/status", nil, &st); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "partition %s of %s: %d of %d shares presented; %d more needed (shares accumulate across calls)\n",
		st.Partition, c.what, st.Presented, st.Threshold, st.Threshold-st.Presented)
	return nil
}

func remoteSeal(e *env, t *adminTarget, partition string) error {
	c, err := t.client()
	if err != nil {
		return err
	}
	if err := checkRemotePartition(c, partition); err != nil {
		return err
	}
	var q server.QuorumStatus
	if err := c.do("POST", "/admin/hsm/seal", nil, &q); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "partition %s of %s is %s\n", q.Partition, c.what, q.State)
	return nil
}

// ---- cert ----

// fromCertInfo converts the admin API's record to the CA's, so that the
// cert commands print remote and local results the same way.
func fromCertInfo(ci server.CertInfo) (*ca.Certificate, error) {
	c := &ca.Certificate{Serial: ci.Serial, Issuer: ci.Issuer, Profile: ci.Profile, Status: ca.Status(ci.Status),
		Names: ci.Names, NotBefore: ci.NotBefore, NotAfter: ci.NotAfter, RevokedAt: ci.RevokedAt, CTFailures: ci.CTFailures}
	if ci.Reason != "" {
		if r, err := ca.ParseReason(ci.Reason); err == nil {
			c.Reason = r
		} else if n, err := strconv.Atoi(ci.Reason); err == nil {
			c.Reason = n
		}
	}
	if ci.Certificate != "" {
		blk, _ := pem.Decode([]byte(ci.Certificate))
		if blk == nil {
			return nil, errors.New("admin API: certificate is not PEM")
		}
		c.DER = blk.Bytes
	}
	rest := []byte(ci.Chain)
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		c.Chain = append(c.Chain, blk.Bytes)
	}
	return c, nil
}

func (t *adminTarget) issue(csrDER []byte, profile, issuer string) (*ca.Certificate, error) {
	c, err := t.client()
	if err != nil {
		return nil, err
	}
	var ci server.CertInfo
	req := server.IssueRequest{CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})), Profile: profile, Issuer: issuer}
	if err := c.do("POST", "/admin/cert/issue", req, &ci); err != nil {
		return nil, err
	}
	return fromCertInfo(ci)
}

func (t *adminTarget) revoke(serial, reason string) (*ca.Certificate, error) {
	c, err := t.client()
	if err != nil {
		return nil, err
	}
	var ci server.CertInfo
	if err := c.do("POST", "/admin/cert/revoke", server.RevokeRequest{Serial: serial, Reason: reason}, &ci); err != nil {
		return nil, err
	}
	return fromCertInfo(ci)
}

func (t *adminTarget) unrevoke(serial string) (*ca.Certificate, error) {
	c, err := t.client()
	if err != nil {
		return nil, err
	}
	var ci server.CertInfo
	if err := c.do("POST", "/admin/cert/unrevoke", server.UnrevokeRequest{Serial: serial}, &ci); err != nil {
		return nil, err
	}
	return fromCertInfo(ci)
}

func (t *adminTarget) show(serial string) (*ca.Certificate, error) {
	c, err := t.client()
	if err != nil {
		return nil, err
	}
	var ci server.CertInfo
	if err := c.do("GET", "/admin/cert/show/"+url.PathEscape(serial), nil, &ci); err != nil {
		return nil, err
	}
	return fromCertInfo(ci)
}

// maxRemotePages bounds how many pages `cert list` fetches.
const maxRemotePages = 10_000

func (t *adminTarget) list(f ca.ListFilter) ([]*ca.Certificate, error) {
	c, err := t.client()
	if err != nil {
		return nil, err
	}
	var out []*ca.Certificate
	after := ""
	for range maxRemotePages {
		v := url.Values{}
		if f.Revoked {
			v.Set("revoked", "true")
		}
		if f.Pending {
			v.Set("pending", "true")
		}
		if f.Refused {
			v.Set("refused", "true")
		}
		if f.ExpiringWithin > 0 {
			v.Set("expiring_within", f.ExpiringWithin.String())
		}
		if f.Issuer != "" {
			v.Set("issuer", f.Issuer)
		}
		if f.Profile != "" {
			v.Set("profile", f.Profile)
		}
		v.Set("limit", "1000")
		if after != "" {
			v.Set("after", after)
		}
		var page server.CertList
		if err := c.do("GET", "/admin/cert/list?"+v.Encode(), nil, &page); err != nil {
			return nil, err
		}
		for _, ci := range page.Certificates {
			cert, err := fromCertInfo(ci)
			if err != nil {
				return nil, err
			}
			out = append(out, cert)
		}
		if page.Next == "" {
			return out, nil
		}
		after = page.Next
	}
	return out, errors.New("admin API: cert list: too many pages")
}

// ---- crl ----

func (t *adminTarget) generateCRL(issuer string) (server.CRLEntry, error) {
	c, err := t.client()
	if err != nil {
		return server.CRLEntry{}, err
	}
	var info server.CRLInfo
	if err := c.do("POST", "/admin/crl/generate", server.CRLRequest{Issuer: issuer}, &info); err != nil {
		return server.CRLEntry{}, err
	}
	want := issuer
	if want == "" {
		// The server made every issuer's CRL it could; this command is
		// about the default issuer's.
		want = info.DefaultIssuer
	}
	for _, c := range info.CRLs {
		if want == "" || c.Issuer == want {
			return c, nil
		}
	}
	for _, f := range info.Failed {
		if f.Issuer == want {
			return server.CRLEntry{}, fmt.Errorf("admin API: CRL of %s: %s", f.Issuer, f.Reason)
		}
	}
	return server.CRLEntry{}, errors.New("admin API: no CRL generated")
}
