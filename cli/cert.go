package cli

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/hsm"
	"github.com/hsmca/hsmca/store"
)

func init() { commands = append(commands, newCertCmd, newCRLCmd) }

// localCA is a CA opened directly on the config's module and store (not
// through a running server).
type localCA struct {
	cfg *Config
	m   hsm.Module
	st  *store.Store
	ca  *ca.CA
}

func openLocalCA(configPath string) (*localCA, error) {
	cfg, err := LoadConfig(configPath)
	if err != nil {
		return nil, err
	}
	m, err := openModule(cfg.Path(cfg.Module))
	if err != nil {
		return nil, err
	}
	st, err := openStore(cfg)
	if err != nil {
		m.Close()
		return nil, err
	}
	c, err := openCA(cfg, m, st, caDeps{})
	if err != nil {
		st.Close()
		m.Close()
		return nil, err
	}
	return &localCA{cfg: cfg, m: m, st: st, ca: c}, nil
}

func (l *localCA) Close() {
	l.st.Close()
	l.m.Close()
}

// activateIssuer gathers the quorum of the partition holding issuer's key
// (empty: the default issuer) for one signature.
func (l *localCA) activateIssuer(e *env, issuer string, q quorumFlags) error {
	return l.activateIssuerFor(e, issuer, q, 1)
}

// activateIssuerFor is activateIssuer for an operation that takes
// signatures signatures of the issuer key (a CT issuance takes two): a
// per-operation partition is activated for that many.
func (l *localCA) activateIssuerFor(e *env, issuer string, q quorumFlags, signatures int) error {
	ic, err := l.issuerConfig(issuer)
	if err != nil {
		return err
	}
	p, err := l.m.Partition(ic.Partition)
	if err != nil {
		return err
	}
	st, err := p.Status()
	if err != nil {
		return err
	}
	if st.Policy == hsm.PolicyPerOperation {
		if err := p.SetOperationSignatures(signatures); err != nil {
			return err
		}
	}
	return q.gather(e, p)
}

func (l *localCA) issuerConfig(name string) (ca.IssuerConfig, error) {
	if name == "" {
		name = l.cfg.CA.DefaultIssuer
	}
	for _, ic := range l.cfg.CA.Issuers {
		if name == "" || ic.Name == name {
			return ic, nil
		}
	}
	return ca.IssuerConfig{}, usagef("unknown issuer %q (the config has %s)", name, issuerNames(l.cfg))
}

// profileNames lists the CA's profiles, sorted.
func profileNames(c *ca.CA) string {
	return strings.Join(slices.Sorted(maps.Keys(c.Profiles())), ", ")
}

func issuerNames(cfg *Config) string {
	var n []string
	for _, ic := range cfg.CA.Issuers {
		n = append(n, ic.Name)
	}
	return strings.Join(n, ", ")
}

func newCertCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cert",
		Short: "Issue, revoke, list and show certificates",
		Example: `  hsmca cert issue --socket ./demo/admin.sock --csr web.csr --profile server --out web.pem
  hsmca cert list --socket ./demo/admin.sock
  hsmca cert revoke 5f3a...e1 --reason keyCompromise --socket ./demo/admin.sock`,
	}
	cmd.AddCommand(newCertIssueCmd(e), newCertRevokeCmd(e), newCertUnrevokeCmd(e), newCertListCmd(e), newCertShowCmd(e))
	return cmd
}

func addConfigFlag(cmd *cobra.Command, p *string) {
	cmd.Flags().StringVar(p, "config", "ca.yaml", "CA config `FILE`")
}

func newCertIssueCmd(e *env) *cobra.Command {
	var (
		configPath, csrPath, profile, issuer, out string
		asJSON                                    bool
		q                                         quorumFlags
		t                                         adminTarget
	)
	cmd := &cobra.Command{
		Use:   "issue --csr FILE --profile NAME",
		Short: "Issue a certificate for a CSR (lint-then-sign through the module)",
		Long: `Issues a certificate for a PKCS #10 CSR (PEM or DER) under a profile of the
CA config. The CSR is checked (signature, key type and size, names, name
policy) and --out is checked (it must not exist; its directory must take new
files) before the issuing partition's quorum is gathered from --share files
or prompts, so a bad request costs no custodian time. The certificate is
linted before the module signs it, and it is stored before it is printed.
A per-operation partition is activated for the signatures the profile takes
(two with Certificate Transparency: precertificate and certificate).
Output: the certificate followed by its issuer chain, PEM. If writing --out
fails after all, the certificate (issued and stored) is printed on standard
output instead and the command fails.`,
		Example: `  hsmca cert issue --config ca.yaml --csr web.csr --profile server --out web.pem \
      --share shares/issuing/share-1.txt --share shares/issuing/share-2.txt --share shares/issuing/share-3.txt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if csrPath == "" || profile == "" {
				return usagef("--csr and --profile are required")
			}
			csr, err := readCSR(csrPath)
			if err != nil {
				return err
			}
			if out != "" {
				// Refuse now what writeNewFile would refuse after the
				// certificate is signed and stored.
				if err := checkNewFile(out); err != nil {
					return err
				}
			}
			if t.remote() {
				c, err := t.issue(csr, profile, issuer)
				if err != nil {
					return err
				}
				return printIssued(e, c, out, asJSON)
			}
			l, err := openLocalCA(configPath)
			if err != nil {
				return err
			}
			defer l.Close()
			if _, ok := l.ca.Profiles()[profile]; !ok {
				return withHint(usagef("unknown profile %q", profile), "the config's profiles are "+profileNames(l.ca))
			}
			// A bad CSR is refused before any custodian is asked for a
			// share and before the module records an activation.
			if err := l.ca.CheckCSR(profile, csr); err != nil {
				return issueError(err)
			}
			sigs, err := l.ca.IssueSignatures(profile)
			if err != nil {
				return err
			}
			if err := l.activateIssuerFor(e, issuer, q, sigs); err != nil {
				return err
			}
			c, err := l.ca.Issue(context.Background(), ca.IssueRequest{CSR: csr, Profile: profile, Issuer: issuer})
			if err != nil {
				return issueError(err)
			}
			return printIssued(e, c, out, asJSON)
		},
	}
	addConfigFlag(cmd, &configPath)
	cmd.Flags().StringVar(&csrPath, "csr", "", "CSR `FILE` (PEM or DER; - for stdin)")
	cmd.Flags().StringVar(&profile, "profile", "", "profile `NAME` (server, client, operator or one from the config)")
	cmd.Flags().StringVar(&issuer, "issuer", "", "issuer `NAME` (default: the config's default issuer)")
	cmd.Flags().StringVar(&out, "out", "", "write the certificate chain to `FILE` instead of stdout (refuses to overwrite)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the certificate record as JSON")
	addQuorumFlags(cmd, &q)
	addAdminFlags(cmd, &t)
	return cmd
}

// issueError turns CA refusals into usage errors (exit 2) with hints.
func issueError(err error) error {
	var pol *ca.ErrPolicy
	var bad *ca.ErrBadCSR
	var lintErr *ca.ErrLint
	switch {
	case errors.As(err, &pol):
		return usageError{withHint(err, "the name policy in the CA config (ca.policy and the profile's policy) decides which names are allowed")}
	case errors.As(err, &bad):
		return usageError{err}
	case errors.As(err, &lintErr):
		return usageError{withHint(err, "nothing was signed by the module; fix the request or the profile")}
	case errors.Is(err, ca.ErrSealed):
		return withHint(err, "present the issuing partition's shares with --share")
	}
	return err
}

func readCSR(path string) ([]byte, error) {
	var b []byte
	var err error
	if path == "-" {
		b, err = readLimited("-", os.Stdin)
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("csr %s: %w", path, err)
	}
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "CERTIFICATE REQUEST" && blk.Type != "NEW CERTIFICATE REQUEST" {
			return nil, usagef("csr %s: PEM block is %q, want CERTIFICATE REQUEST", path, blk.Type)
		}
		return blk.Bytes, nil
	}
	return b, nil
}

// certJSON is the --json form of a certificate record.
type certJSON struct {
	Serial    string    `json:"serial"`
	Status    string    `json:"status"`
	Issuer    string    `json:"issuer"`
	Profile   string    `json:"profile"`
	Names     []string  `json:"names"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
	Reason    string    `json:"reason,omitempty"`
	PEM       string    `json:"pem,omitempty"`
}

func toCertJSON(c *ca.Certificate, withPEM bool) certJSON {
	j := certJSON{Serial: c.Serial, Status: string(c.Status), Issuer: c.Issuer, Profile: c.Profile, Names: c.Names, NotBefore: c.NotBefore, NotAfter: c.NotAfter, RevokedAt: c.RevokedAt}
	if !c.RevokedAt.IsZero() {
		j.Reason = ca.ReasonString(c.Reason)
	}
	if withPEM && c.DER != nil {
		j.PEM = string(chainPEM(c))
	}
	return j
}

func chainPEM(c *ca.Certificate) []byte {
	var b []byte
	b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.DER})...)
	for _, d := range c.Chain {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d})...)
	}
	return b
}

// printIssued writes an issued certificate to out (or stdout) as PEM, or
// its record as JSON. The certificate is signed and stored already: if out
// cannot be written (checkNewFile ran before, but the file system may
// have changed since), it goes to stdout so that it is not lost, and the
// error says so.
func printIssued(e *env, c *ca.Certificate, out string, asJSON bool) error {
	if out != "" {
		if err := writeNewFile(out, chainPEM(c)); err != nil {
			var perr error
			if asJSON {
				perr = writeJSON(e.stdout, toCertJSON(c, true))
			} else {
				_, perr = e.stdout.Write(chainPEM(c))
			}
			shown := "printed on standard output instead"
			if perr != nil {
				shown = "not printed either (" + perr.Error() + ")"
			}
			return withHint(fmt.Errorf("certificate %s was issued and stored, but could not be written to %s (%w); it is %s", c.Serial, out, err, shown),
				"do not issue it again: `hsmca cert show "+c.Serial+"` prints it from the store")
		}
		fmt.Fprintf(e.stderr, "issued serial %s (%s, %s), written to %s\n", c.Serial, c.Profile, strings.Join(c.Names, ", "), out)
	}
	if asJSON {
		return writeJSON(e.stdout, toCertJSON(c, true))
	}
	if out == "" {
		_, err := e.stdout.Write(chainPEM(c))
		return err
	}
	return nil
}

func newCertRevokeCmd(e *env) *cobra.Command {
	var (
		configPath, reason string
		asJSON             bool
		t                  adminTarget
	)
	cmd := &cobra.Command{
		Use:   "revoke SERIAL --reason REASON",
		Short: "Revoke a certificate (RFC 5280 reason codes)",
		Long: `Marks a certificate revoked in the store with an RFC 5280 reason:
unspecified, keyCompromise, affiliationChanged, superseded,
cessationOfOperation, certificateHold, privilegeWithdrawn, aACompromise.
A pending serial (one that may have been signed before a crash) can be revoked
too. A certificate on certificateHold can be revoked again with another reason,
which makes it final, and any revoked certificate can be moved to
keyCompromise; any other second revocation is refused. A certificate on
certificateHold, and only one on hold, can be released with 'hsmca cert
unrevoke'.

With --socket or --server the running CA publishes new CRLs at once; on a
stopped CA (--config) the next 'crl generate' lists it.`,
		Example: `  hsmca cert revoke 5f3a...e1 --reason keyCompromise --config ca.yaml`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			code, err := ca.ParseReason(reason)
			if err != nil {
				return usageError{err}
			}
			serial, err := ca.ParseSerial(args[0])
			if err != nil {
				return usageError{err}
			}
			if t.remote() {
				c, err := t.revoke(serial, ca.ReasonString(code))
				if err != nil {
					return err
				}
				if asJSON {
					return writeJSON(e.stdout, toCertJSON(c, false))
				}
				fmt.Fprintf(e.stdout, "revoked %s (%s); the running CA publishes new CRLs\n", c.Serial, ca.ReasonString(c.Reason))
				return nil
			}
			l, err := openLocalCA(configPath)
			if err != nil {
				return err
			}
			defer l.Close()
			c, err := l.ca.Revoke(context.Background(), serial, code)
			if err != nil {
				if errors.Is(err, ca.ErrUnknownSerial) {
					return usageError{withHint(err, "list serials with `hsmca cert list`")}
				}
				return err
			}
			if asJSON {
				return writeJSON(e.stdout, toCertJSON(c, false))
			}
			fmt.Fprintf(e.stdout, "revoked %s (%s)\n", c.Serial, ca.ReasonString(c.Reason))
			fmt.Fprintf(e.stderr, "hint: publish it with `hsmca crl generate --config %s`\n", configPath)
			return nil
		},
	}
	addConfigFlag(cmd, &configPath)
	cmd.Flags().StringVar(&reason, "reason", "unspecified", "RFC 5280 revocation `REASON`")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the record as JSON")
	addAdminFlags(cmd, &t)
	return cmd
}

func newCertUnrevokeCmd(e *env) *cobra.Command {
	var (
		configPath string
		asJSON     bool
		t          adminTarget
	)
	cmd := &cobra.Command{
		Use:   "unrevoke SERIAL",
		Short: "Take a certificate off certificateHold",
		Long: `Releases a certificate that was revoked with the reason certificateHold
(RFC 5280 §5.3.1): it is valid again, the next CRL leaves it out and OCSP
answers good. Only a hold can be undone; a certificate revoked for any other
reason, or not revoked, is refused (exit 1, as a second revocation is) and
nothing changes; an unknown serial is a usage error (exit 2).

With --socket or --server the running CA publishes new CRLs at once; on a
stopped CA (--config) the next 'crl generate' leaves it out.`,
		Example: `  hsmca cert revoke 5f3a...e1 --reason certificateHold --socket ./demo/admin.sock
  hsmca cert unrevoke 5f3a...e1 --socket ./demo/admin.sock`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			serial, err := ca.ParseSerial(args[0])
			if err != nil {
				return usageError{err}
			}
			var c *ca.Certificate
			if t.remote() {
				if c, err = t.unrevoke(serial); err != nil {
					return err
				}
			} else {
				l, err := openLocalCA(configPath)
				if err != nil {
					return err
				}
				defer l.Close()
				if c, err = l.ca.Unrevoke(context.Background(), serial); err != nil {
					switch {
					case errors.Is(err, ca.ErrUnknownSerial):
						return usageError{withHint(err, "list serials with `hsmca cert list`")}
					case errors.Is(err, ca.ErrNotOnHold):
						return withHint(err, "see its status with `hsmca cert show "+serial+"`")
					}
					return err
				}
			}
			if asJSON {
				return writeJSON(e.stdout, toCertJSON(c, false))
			}
			fmt.Fprintf(e.stdout, "released %s from certificateHold; it is %s\n", c.Serial, c.Status)
			if !t.remote() {
				fmt.Fprintf(e.stderr, "hint: publish a CRL without it with `hsmca crl generate --config %s`\n", configPath)
			}
			return nil
		},
	}
	addConfigFlag(cmd, &configPath)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the record as JSON")
	addAdminFlags(cmd, &t)
	return cmd
}

func newCertListCmd(e *env) *cobra.Command {
	var (
		configPath, expiring string
		revoked, pending     bool
		refused, asJSON      bool
		t                    adminTarget
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List certificates on record",
		Example: `  hsmca cert list --config ca.yaml
  hsmca cert list --revoked --json
  hsmca cert list --expiring 30d
  hsmca cert list --refused     # serials the lints refused after recording them; never signed`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			f := ca.ListFilter{Revoked: revoked, Pending: pending, Refused: refused}
			if expiring != "" {
				d, err := ca.ParseDuration(expiring)
				if err != nil {
					return usageError{err}
				}
				if d.D() <= 0 {
					return usageError{fmt.Errorf("--expiring %s: want a positive duration such as 30d", expiring)}
				}
				f.ExpiringWithin = d.D()
			}
			if t.remote() {
				certs, err := t.list(f)
				if err != nil {
					return err
				}
				return printCertList(e, certs, asJSON)
			}
			l, err := openLocalCA(configPath)
			if err != nil {
				return err
			}
			defer l.Close()
			certs, err := l.ca.List(context.Background(), f)
			if err != nil {
				return err
			}
			return printCertList(e, certs, asJSON)
		},
	}
	addConfigFlag(cmd, &configPath)
	cmd.Flags().BoolVar(&revoked, "revoked", false, "only revoked certificates")
	cmd.Flags().BoolVar(&pending, "pending", false, "only pending records (serials that may have been signed before a crash)")
	cmd.Flags().BoolVar(&refused, "refused", false, "only refused records (serials recorded, then refused by the lints; never signed, never reused)")
	cmd.Flags().StringVar(&expiring, "expiring", "", "only certificates expiring within `DURATION` (e.g. 30d)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	addAdminFlags(cmd, &t)
	return cmd
}

// printCertList prints certificate records as a table or JSON.
func printCertList(e *env, certs []*ca.Certificate, asJSON bool) error {
	if asJSON {
		out := make([]certJSON, 0, len(certs))
		for _, c := range certs {
			out = append(out, toCertJSON(c, false))
		}
		return writeJSON(e.stdout, out)
	}
	tw := newTable(e.stdout)
	fmt.Fprintln(tw, "SERIAL\tSTATUS\tPROFILE\tNOT AFTER\tNAMES")
	for _, c := range certs {
		status := string(c.Status)
		if !c.RevokedAt.IsZero() {
			status += " (" + ca.ReasonString(c.Reason) + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Serial, status, c.Profile, c.NotAfter.UTC().Format("2006-01-02"), strings.Join(c.Names, ","))
	}
	return tw.Flush()
}

func newCertShowCmd(e *env) *cobra.Command {
	var (
		configPath string
		asJSON     bool
		t          adminTarget
	)
	cmd := &cobra.Command{
		Use:     "show SERIAL",
		Short:   "Show one certificate and its status",
		Example: `  hsmca cert show 5f3a...e1 --config ca.yaml`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			serial, err := ca.ParseSerial(args[0])
			if err != nil {
				return usageError{err}
			}
			var c *ca.Certificate
			if t.remote() {
				if c, err = t.show(serial); err != nil {
					return err
				}
			} else {
				l, err := openLocalCA(configPath)
				if err != nil {
					return err
				}
				defer l.Close()
				c, err = l.ca.Get(context.Background(), serial)
				if err != nil {
					if errors.Is(err, ca.ErrUnknownSerial) {
						return usageError{withHint(err, "list serials with `hsmca cert list`")}
					}
					return err
				}
			}
			if asJSON {
				return writeJSON(e.stdout, toCertJSON(c, true))
			}
			fmt.Fprintf(e.stdout, "serial:     %s\nstatus:     %s\nissuer:     %s\nprofile:    %s\nnames:      %s\nnot before: %s\nnot after:  %s\n",
				c.Serial, c.Status, c.Issuer, c.Profile, strings.Join(c.Names, ", "), c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))
			if !c.RevokedAt.IsZero() {
				fmt.Fprintf(e.stdout, "revoked:    %s (%s)\n", c.RevokedAt.UTC().Format(time.RFC3339), ca.ReasonString(c.Reason))
			}
			if c.DER != nil {
				if cert, err := x509.ParseCertificate(c.DER); err == nil {
					fmt.Fprintf(e.stdout, "subject:    %s\n", cert.Subject)
				}
				_, err = e.stdout.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.DER}))
			}
			return err
		},
	}
	addConfigFlag(cmd, &configPath)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (with the PEM chain)")
	addAdminFlags(cmd, &t)
	return cmd
}
