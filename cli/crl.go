package cli

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/hsmca/hsmca/ca"
)

func newCRLCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "crl",
		Short: "Generate and inspect certificate revocation lists",
		Example: `  hsmca crl generate --socket ./demo/admin.sock --out intermediate-1.crl
  hsmca crl show intermediate-1.crl --issuer-cert ./demo/intermediate-1.pem`,
	}
	cmd.AddCommand(newCRLGenerateCmd(e), newCRLShowCmd(e))
	return cmd
}

// crlGeneratedJSON is the --json form of `crl generate`.
type crlGeneratedJSON struct {
	Issuer     string    `json:"issuer"`
	Number     string    `json:"number"`
	ThisUpdate time.Time `json:"this_update"`
	NextUpdate time.Time `json:"next_update"`
	Entries    int       `json:"entries"`
	// File is where --out wrote the CRL; without --out, PEM holds it.
	File string `json:"file,omitempty"`
	PEM  string `json:"pem,omitempty"`
	// URL is where the running CA serves it (--socket or --server).
	URL string `json:"url,omitempty"`
}

func newCRLGenerateCmd(e *env) *cobra.Command {
	var (
		configPath, issuer, out string
		asJSON                  bool
		q                       quorumFlags
		t                       adminTarget
	)
	cmd := &cobra.Command{
		Use:   "generate",
		Short: "Sign a new CRL for an issuer through the module (the CRL number always grows)",
		Long: `Signs a new CRL for an issuer with its module key and stores it as the latest.
The CRL number always grows; revoked certificates stay listed until they have
been on one CRL made after they expired (RFC 5280 §3.3).

On a stopped CA (--config) the issuing partition's quorum is gathered as for
'cert issue'; with --socket or --server the running CA signs it and serves it
at once. The CRL goes to stdout as PEM, or to --out (never overwritten);
--json prints its number, dates and entry count for scripts instead.`,
		Example: `  hsmca crl generate --config ca.yaml --issuer intermediate-1 --out intermediate-1.crl \
      --share shares/issuing/share-1.txt --share shares/issuing/share-2.txt --share shares/issuing/share-3.txt
  hsmca crl generate --socket ./demo/admin.sock --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var (
				res     crlGeneratedJSON
				pemData []byte
			)
			if t.remote() {
				c, err := t.generateCRL(issuer)
				if err != nil {
					return err
				}
				pemData = []byte(c.PEM)
				res = crlGeneratedJSON{Issuer: c.Issuer, URL: c.URL}
			} else {
				l, err := openLocalCA(configPath)
				if err != nil {
					return err
				}
				defer l.Close()
				ic, err := l.issuerConfig(issuer)
				if err != nil {
					return err
				}
				if err := l.activateIssuer(e, ic.Name, q); err != nil {
					return err
				}
				der, err := l.ca.GenerateCRL(context.Background(), ic.Name)
				if err != nil {
					return issueError(err)
				}
				pemData = pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
				res = crlGeneratedJSON{Issuer: ic.Name}
			}
			blk, _ := pem.Decode(pemData)
			if blk == nil {
				return fmt.Errorf("crl generate: the CA returned no PEM CRL")
			}
			crl, err := x509.ParseRevocationList(blk.Bytes)
			if err != nil {
				return fmt.Errorf("crl generate: parse the new CRL: %w", err)
			}
			res.Number, res.ThisUpdate, res.NextUpdate = crl.Number.String(), crl.ThisUpdate.UTC(), crl.NextUpdate.UTC()
			res.Entries = len(crl.RevokedCertificateEntries)
			if out != "" {
				if err := writeNewFile(out, pemData); err != nil {
					return err
				}
				res.File = out
			}
			switch {
			case asJSON:
				if out == "" {
					res.PEM = string(pemData)
				}
				return writeJSON(e.stdout, res)
			case out == "":
				_, err = e.stdout.Write(pemData)
				return err
			}
			served := ""
			if res.URL != "" {
				served = " (served at " + res.URL + ")"
			}
			fmt.Fprintf(e.stderr, "CRL number %s for %s with %d entries written to %s%s\n", res.Number, res.Issuer, res.Entries, out, served)
			return nil
		},
	}
	addConfigFlag(cmd, &configPath)
	cmd.Flags().StringVar(&issuer, "issuer", "", "issuer `NAME` (default: the config's default issuer)")
	cmd.Flags().StringVar(&out, "out", "", "write the CRL (PEM) to `FILE` instead of stdout (refuses to overwrite)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the number, dates and entry count as JSON (with the PEM unless --out)")
	addQuorumFlags(cmd, &q)
	addAdminFlags(cmd, &t)
	return cmd
}

// crlJSON is the --json form of `crl show`.
type crlJSON struct {
	Issuer     string         `json:"issuer"`
	Number     string         `json:"number"`
	ThisUpdate time.Time      `json:"this_update"`
	NextUpdate time.Time      `json:"next_update"`
	Entries    []crlEntryJSON `json:"entries"`
}

type crlEntryJSON struct {
	Serial    string    `json:"serial"`
	RevokedAt time.Time `json:"revoked_at"`
	Reason    string    `json:"reason"`
}

func newCRLShowCmd(e *env) *cobra.Command {
	var (
		issuerPath string
		asJSON     bool
	)
	cmd := &cobra.Command{
		Use:     "show FILE",
		Short:   "Print a CRL's number, dates and entries (optionally checking its signature)",
		Example: `  hsmca crl show root-crl.pem --issuer-cert root.pem`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			if blk, _ := pem.Decode(b); blk != nil {
				b = blk.Bytes
			}
			crl, err := x509.ParseRevocationList(b)
			if err != nil {
				return usagef("%s: not a CRL: %v", args[0], err)
			}
			if issuerPath != "" {
				ib, err := os.ReadFile(issuerPath)
				if err != nil {
					return err
				}
				certs, err := ca.ParsePEMCertificates(ib)
				if err != nil || len(certs) == 0 {
					return usagef("%s: no certificate", issuerPath)
				}
				if err := crl.CheckSignatureFrom(certs[0]); err != nil {
					return fmt.Errorf("crl: signature does not verify against %s: %w", issuerPath, err)
				}
				fmt.Fprintf(e.stderr, "signature verified against %s\n", certs[0].Subject)
			}
			j := crlJSON{Issuer: crl.Issuer.String(), ThisUpdate: crl.ThisUpdate, NextUpdate: crl.NextUpdate, Entries: []crlEntryJSON{}}
			if crl.Number != nil {
				j.Number = crl.Number.String()
			}
			for _, en := range crl.RevokedCertificateEntries {
				j.Entries = append(j.Entries, crlEntryJSON{Serial: ca.SerialString(en.SerialNumber), RevokedAt: en.RevocationTime, Reason: ca.ReasonString(en.ReasonCode)})
			}
			if asJSON {
				return writeJSON(e.stdout, j)
			}
			fmt.Fprintf(e.stdout, "issuer:      %s\nnumber:      %s\nthis update: %s\nnext update: %s\nentries:     %d\n", j.Issuer, j.Number, j.ThisUpdate.UTC().Format(time.RFC3339), j.NextUpdate.UTC().Format(time.RFC3339), len(j.Entries))
			for _, en := range j.Entries {
				fmt.Fprintf(e.stdout, "  %s  %s  %s\n", en.Serial, en.RevokedAt.UTC().Format(time.RFC3339), en.Reason)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&issuerPath, "issuer-cert", "", "verify the signature against this issuer certificate `FILE`")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
