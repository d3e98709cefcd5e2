package cli

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/hsmca/hsmca/hsm"
)

func newHSMAuditCmd(e *env, f *hsmFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "audit",
		Short:   "Verify the module's hash-chained audit log",
		Example: `  hsmca hsm audit verify --module ./module`,
	}
	cmd.AddCommand(newHSMAuditVerifyCmd(e, f))
	return cmd
}

// auditVerifyJSON is the --json output of `hsm audit verify`.
type auditVerifyJSON struct {
	OK        bool   `json:"ok"`
	Records   uint64 `json:"records"`
	Head      string `json:"head,omitempty"`
	PublicKey string `json:"public_key,omitempty"`
	// BadRecord is the sequence number of the first record that fails, when
	// the chain is broken.
	BadRecord *uint64 `json:"bad_record,omitempty"`
	Error     string  `json:"error,omitempty"`
}

func newHSMAuditVerifyCmd(e *env, f *hsmFlags) *cobra.Command {
	var (
		asJSON bool
		pinned string
	)
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check every link of the audit chain and the signed head",
		Long: `Check every record of the module's audit log against the previous one and the
head's signature by the module audit key, and print the number of records and
the head hash. Changing, deleting or truncating records is detected.

--audit-key pins the audit key printed by hsm init, so that a log re-signed by
another key is refused too. Exit code 1 when the log does not verify.`,
		Example: `  hsmca hsm audit verify --module ./module
  hsmca hsm audit verify --module ./module --audit-key BASE64KEY --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := openModule(f.module)
			if err != nil {
				return err
			}
			defer m.Close()
			head, verr := m.Audit().Verify()
			if verr == nil && pinned != "" && head.PublicKey != pinned {
				verr = fmt.Errorf("audit head is signed by key %s, not the pinned --audit-key", head.PublicKey)
			}
			res := auditVerifyJSON{OK: verr == nil, Records: head.Count, Head: head.Hash, PublicKey: head.PublicKey}
			var ae *hsm.AuditError
			if errors.As(verr, &ae) {
				seq := ae.Seq
				res.BadRecord = &seq
			}
			if verr != nil {
				res.Error = verr.Error()
			}
			if asJSON {
				if err := writeJSON(e.stdout, res); err != nil {
					return err
				}
			} else if verr == nil {
				fmt.Fprintf(e.stdout, "audit log OK: %d records, head %s, audit key %s\n", head.Count, head.Hash, head.PublicKey)
			}
			if verr != nil {
				return withHint(verr, "the module's audit log was altered; keep the module as it is and investigate")
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	cmd.Flags().StringVar(&pinned, "audit-key", "", "expected audit key (base64), as printed by hsm init")
	return cmd
}
