package cli

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hsmca/hsmca/hsm"
)

func newHSMAuditCmd(e *env, f *hsmFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Verify and list the module's hash-chained audit log",
		Example: `  hsmca hsm audit verify --module ./module
  hsmca hsm audit list --module ./module --limit 50`,
	}
	cmd.AddCommand(newHSMAuditVerifyCmd(e, f), newHSMAuditListCmd(e, f))
	return cmd
}

func newHSMAuditListCmd(e *env, f *hsmFlags) *cobra.Command {
	var (
		from   uint64
		limit  int
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "Print audit records (init, shares, activation, keys, signatures, exports)",
		Long: `Print the module's audit records from --from on, oldest first: sequence number,
time, event type, partition and the event's fields (key IDs, digests, share
indexes, reasons; never a secret). This does not verify the chain; run
` + "`hsmca hsm audit verify`" + ` for that.`,
		Example: `  hsmca hsm audit list --module ./module --from 1 --limit 50
  hsmca hsm audit list --module ./module --json | jq -c '.[] | select(.type == "sign")'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if limit < 0 {
				return usagef("--limit must not be negative")
			}
			m, err := openModule(f.module)
			if err != nil {
				return err
			}
			defer m.Close()
			events, err := m.Audit().Events(from, limit)
			if err != nil {
				return err
			}
			if asJSON {
				if events == nil {
					events = []hsm.AuditEvent{}
				}
				return writeJSON(e.stdout, events)
			}
			tw := newTable(e.stdout)
			fmt.Fprintln(tw, "SEQ\tTIME\tTYPE\tPARTITION\tFIELDS")
			for _, ev := range events {
				keys := make([]string, 0, len(ev.Fields))
				for k := range ev.Fields {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				var fields []string
				for _, k := range keys {
					fields = append(fields, k+"="+ev.Fields[k])
				}
				part := ev.Partition
				if part == "" {
					part = "-"
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", ev.Seq, ev.Time.UTC().Format(time.RFC3339), ev.Type, part, strings.Join(fields, " "))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().Uint64Var(&from, "from", 1, "first record `SEQ` to print")
	cmd.Flags().IntVar(&limit, "limit", 0, "print at most `N` records (0: all)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
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
