package cli

import (
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/hsmca/hsmca/ct"
)

func init() { commands = append(commands, newCTCmd) }

func newCTCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "ct",
		Short:   "Certificate Transparency: check the SCTs embedded in certificates",
		Example: `  hsmca ct verify www.pem --issuer intermediate.pem --log-key ct/internal-2026.pem`,
	}
	cmd.AddCommand(newCTVerifyCmd(e))
	return cmd
}

// ctSCTJSON is one SCT in the --json output of `ct verify`.
type ctSCTJSON struct {
	Log       string    `json:"log,omitempty"`
	LogID     string    `json:"log_id"`
	Timestamp time.Time `json:"timestamp"`
	OK        bool      `json:"ok"`
	Error     string    `json:"error,omitempty"`
}

func newCTVerifyCmd(e *env) *cobra.Command {
	var (
		issuerPath, listPath string
		keyPaths             []string
		asJSON               bool
	)
	cmd := &cobra.Command{
		Use:   "verify CERT.pem",
		Short: "Verify the SCTs embedded in a certificate against the logs' keys (RFC 6962)",
		Long: `Verify checks every SCT embedded in CERT.pem: it must name a known log and
carry that log's valid signature over the certificate's precertificate entry.
It prints each SCT's log, log ID and timestamp, and exits 1 if any fails.

The issuer comes from --issuer or, failing that, from the second certificate
in CERT.pem. Logs come from a loglist3 JSON file (--log-list) and/or public
key files (--log-key, repeatable; the log is named after the file).`,
		Example: `  hsmca ct verify www.pem --issuer intermediate.pem --log-key ct/internal-2026.pem
  hsmca ct verify chain.pem --log-list log_list.json --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			certs, err := readCTCerts(args[0])
			if err != nil {
				return usageError{err}
			}
			issuerCerts := certs[1:]
			if issuerPath != "" {
				if issuerCerts, err = readCTCerts(issuerPath); err != nil {
					return usageError{err}
				}
			}
			if len(issuerCerts) == 0 {
				return withHint(usagef("ct: no issuer certificate"), "pass --issuer FILE or put the issuer after the certificate in "+args[0])
			}
			logs, err := ct.LoadVerificationLogs(listPath, keyPaths)
			if err != nil {
				if listPath == "" && len(keyPaths) == 0 {
					return withHint(usageError{err}, "pass --log-key FILE (a log's PEM public key) or --log-list FILE")
				}
				return usageError{err}
			}
			ok, verr := ct.VerifyEmbedded(certs[0], issuerCerts[0], logs)
			var ve *ct.VerifyError
			if verr != nil && !errors.As(verr, &ve) {
				return verr
			}
			rows := make([]ctSCTJSON, 0, len(ok))
			for _, v := range ok {
				rows = append(rows, ctSCTJSON{Log: v.LogName, LogID: base64.StdEncoding.EncodeToString(v.LogID[:]), Timestamp: v.Timestamp.UTC(), OK: true})
			}
			if ve != nil {
				for _, f := range ve.Failures {
					rows = append(rows, ctSCTJSON{Log: f.LogName, LogID: base64.StdEncoding.EncodeToString(f.LogID[:]), Timestamp: f.Timestamp.UTC(), Error: f.Err.Error()})
				}
			}
			if asJSON {
				if err := writeJSON(e.stdout, rows); err != nil {
					return err
				}
			} else {
				tw := newTable(e.stdout)
				fmt.Fprintln(tw, "LOG\tLOG ID\tTIMESTAMP\tRESULT")
				for _, r := range rows {
					name, result := r.Log, "ok"
					if name == "" {
						name = "(unknown)"
					}
					if !r.OK {
						result = "FAILED: " + r.Error
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", name, r.LogID, r.Timestamp.Format("2006-01-02T15:04:05.000Z"), result)
				}
				if err := tw.Flush(); err != nil {
					return err
				}
			}
			if ve != nil {
				return fmt.Errorf("ct: %d of %d embedded SCTs failed verification", len(ve.Failures), len(rows))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&issuerPath, "issuer", "", "issuer certificate `FILE` (PEM or DER; default: the second certificate in CERT.pem)")
	cmd.Flags().StringVar(&listPath, "log-list", "", "loglist3 JSON `FILE` naming the logs and their keys")
	cmd.Flags().StringArrayVar(&keyPaths, "log-key", nil, "a log's public key `FILE` (PEM or DER); repeatable")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the SCTs as JSON")
	return cmd
}

// readCTCerts reads PEM or DER certificates from path.
func readCTCerts(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ct.ParseCertificates(data)
}
