package cli

import (
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hsmca/hsmca/hsm"
	"github.com/hsmca/hsmca/hsm/audit"
)

func newHSMAuditCmd(e *env, f *hsmFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Verify and list the module's hash-chained audit log",
		Example: `  hsmca hsm audit verify --module ./module
  hsmca hsm audit verify --module ./module --known-head 23:9f2c0be1c2d36b9e3f7f0d7a5e8a4c1b2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a
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
` + "`hsmca hsm audit verify`" + ` for that. Like verify, it changes nothing in
the module directory.`,
		Example: `  hsmca hsm audit list --module ./module --from 1 --limit 50
  hsmca hsm audit list --module ./module --json | jq -c '.[] | select(.type == "sign")'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if limit < 0 {
				return usagef("--limit must not be negative")
			}
			m, err := openModuleReadOnly(f.module)
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
	// KnownHeads are the --known-head values the log was checked against.
	KnownHeads []string `json:"known_heads,omitempty"`
	// BadRecord is the sequence number of the first record that fails, when
	// the chain is broken.
	BadRecord *uint64 `json:"bad_record,omitempty"`
	Error     string  `json:"error,omitempty"`
}

// headExtender is what `audit verify --known-head` needs of a module's
// audit log (*audit.Log, in both backends).
type headExtender interface {
	VerifyExtends(known ...hsm.AuditHead) (hsm.AuditHead, error)
}

// parseKnownHead parses COUNT:HASH, the record count and head hash that
// `hsm status`, `hsm audit verify` and ceremony transcripts print ("record
// 23, head 9f2c..." is 23:9f2c...).
func parseKnownHead(s string) (hsm.AuditHead, error) {
	count, hash, ok := strings.Cut(s, ":")
	n, err := strconv.ParseUint(count, 10, 64)
	if !ok || err != nil || strconv.FormatUint(n, 10) != count {
		return hsm.AuditHead{}, usagef("--known-head %q: want COUNT:HASH, the record count and head hash as hsm status or a ceremony transcript prints them", s)
	}
	hash = strings.ToLower(hash)
	if b, err := hex.DecodeString(hash); err != nil || len(b) != 32 {
		return hsm.AuditHead{}, usagef("--known-head %q: the head hash must be 64 hex digits", s)
	}
	if n == 0 && hash != strings.Repeat("0", 64) {
		return hsm.AuditHead{}, usagef("--known-head %q: a head of 0 records has the zero hash", s)
	}
	return hsm.AuditHead{Count: n, Hash: hash}, nil
}

func newHSMAuditVerifyCmd(e *env, f *hsmFlags) *cobra.Command {
	var (
		asJSON     bool
		pinned     string
		knownHeads []string
	)
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check every link of the audit chain, the signed head and heads kept earlier",
		Long: `Check every record of the module's audit log against the previous one and the
head's signature by the module audit key, and print the number of records and
the head hash. Changing, deleting or truncating records is detected, and so is
a missing or replaced audit segment (audit.seg). Verifying changes nothing
in the module directory (a soft module is opened read-only): a missing or
damaged audit.seg is left as it was found, and a copy on read-only media
can be checked.

The audit key lives in the module's files, so someone who can write them can
rewrite the log and sign it again, or cut the newest records off together with
the newest head. What they cannot do is keep a head that was recorded
elsewhere: --known-head COUNT:HASH checks that record COUNT of the log still
has hash HASH. Take the head from a ceremony transcript ("audit after: record
23, head 9f2c...": 23:9f2c...), from hsm status or from an earlier verify,
keep it off the module's machine, and pass it at each audit; repeat the flag
for several heads.

--audit-key pins the audit key printed by hsm init, so that a log re-signed by
another key is refused too. Exit code 1 when the log does not verify or does
not extend a known head; 2 for a malformed flag.`,
		Example: `  hsmca hsm audit verify --module ./module
  hsmca hsm audit verify --module ./module --audit-key BASE64KEY --json
  hsmca hsm audit verify --module ./module \
      --known-head 23:9f2c0be1c2d36b9e3f7f0d7a5e8a4c1b2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var known []hsm.AuditHead
			for _, s := range knownHeads {
				h, err := parseKnownHead(s)
				if err != nil {
					return err
				}
				known = append(known, h)
			}
			m, err := openModuleReadOnly(f.module)
			if err != nil {
				return err
			}
			defer m.Close()
			var (
				head hsm.AuditHead
				verr error
			)
			if len(known) > 0 {
				ext, ok := m.Audit().(headExtender)
				if !ok {
					return fmt.Errorf("the %s module's audit log cannot check known heads", m.Backend())
				}
				head, verr = ext.VerifyExtends(known...)
			} else {
				head, verr = m.Audit().Verify()
			}
			if verr == nil && pinned != "" && head.PublicKey != pinned {
				verr = fmt.Errorf("audit head is signed by key %s, not the pinned --audit-key", head.PublicKey)
			}
			res := auditVerifyJSON{OK: verr == nil, Records: head.Count, Head: head.Hash, PublicKey: head.PublicKey, KnownHeads: knownHeads}
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
				for _, k := range known {
					fmt.Fprintf(e.stdout, "extends the known head %d:%s\n", k.Count, k.Hash)
				}
			}
			if errors.Is(verr, audit.ErrNotExtended) {
				return withHint(verr, "the log does not hold a head kept from before: it was rewritten and signed again, or its newest records were cut off; keep the module as it is and investigate")
			}
			if verr != nil {
				return withHint(verr, "the module's audit log was altered; keep the module as it is and investigate")
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	cmd.Flags().StringVar(&pinned, "audit-key", "", "expected audit key (base64), as printed by hsm init")
	cmd.Flags().StringArrayVar(&knownHeads, "known-head", nil, "a head kept from before, `COUNT:HASH` (record count and head hash as hsm status or a ceremony transcript prints them); the log must extend it (repeatable)")
	return cmd
}
