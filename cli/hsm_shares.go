package cli

import (
	"fmt"
	"strings"

	"filippo.io/age"

	"github.com/hsmca/hsmca/hsm"
)

// custodian is one --custodian flag: a name, and optionally the age
// recipient the custodian's share is encrypted to.
type custodian struct {
	Name      string
	Recipient string // empty: the share is written as plain text
}

// parseCustodian parses "NAME" or "NAME=RECIPIENT", where NAME becomes the
// share's file name (letters, digits, '.', '_', '-'; at most 64; not
// starting with '.') and RECIPIENT is an age X25519 or hybrid recipient.
func parseCustodian(s string) (custodian, error) {
	name, rcpt, hasRcpt := strings.Cut(s, "=")
	if err := validCustodianName(name); err != nil {
		return custodian{}, err
	}
	c := custodian{Name: name}
	if hasRcpt {
		rcpt = strings.TrimSpace(rcpt)
		if rcpt == "" {
			return custodian{}, fmt.Errorf("custodian %s: empty age recipient", name)
		}
		if strings.ContainsAny(rcpt, "\n#") {
			return custodian{}, fmt.Errorf("custodian %s: invalid age recipient", name)
		}
		rs, err := age.ParseRecipients(strings.NewReader(rcpt))
		if err != nil || len(rs) != 1 {
			return custodian{}, fmt.Errorf("custodian %s: invalid age recipient (want age1...)", name)
		}
		c.Recipient = rcpt
	}
	return c, nil
}

func validCustodianName(name string) error {
	if name == "" || len(name) > 64 || name[0] == '.' || name[0] == '-' {
		return fmt.Errorf("invalid custodian name %q (letters, digits, '.', '_', '-'; at most 64)", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("invalid custodian name %q (letters, digits, '.', '_', '-'; at most 64)", name)
		}
	}
	return nil
}

// shareSetFlags are the flags that describe a new share set (hsm init and
// hsm reshare).
type shareSetFlags struct {
	shares     int
	threshold  int
	out        string
	custodians []string
}

// shareSet is a validated shareSetFlags.
type shareSet struct {
	N, M       int
	Out        string
	Custodians []custodian // empty, or exactly N
	Names      []string    // file name of share i+1
	Paths      []string    // where share i+1 will be written (set by prepare)
}

// validate checks N, M and the custodians without touching the file
// system.
func (f shareSetFlags) validate() (shareSet, error) {
	s := shareSet{N: f.shares, M: f.threshold, Out: f.out}
	switch {
	case f.shares < 1 || f.shares > 255:
		return s, usagef("--shares must be between 1 and 255, got %d", f.shares)
	case f.threshold < 1:
		return s, usagef("--threshold must be at least 1, got %d", f.threshold)
	case f.threshold > f.shares:
		return s, usagef("--threshold %d is more than --shares %d: the partition could never be activated", f.threshold, f.shares)
	case f.out == "":
		return s, usagef("--out DIR is required: the share files are written there")
	}
	if len(f.custodians) > 0 && len(f.custodians) != f.shares {
		return s, withHint(usagef("%d --custodian flags for %d shares", len(f.custodians), f.shares), "give one --custodian per share, or none")
	}
	seen := map[string]bool{}
	names := make([]string, f.shares)
	for i := range names {
		names[i] = fmt.Sprintf("share-%d.txt", i+1)
	}
	for i, arg := range f.custodians {
		c, err := parseCustodian(arg)
		if err != nil {
			return s, usageError{err}
		}
		if seen[c.Name] {
			return s, usagef("custodian %s given twice", c.Name)
		}
		seen[c.Name] = true
		s.Custodians = append(s.Custodians, c)
		if c.Recipient != "" {
			names[i] = c.Name + ".age"
		} else {
			names[i] = c.Name + ".txt"
		}
	}
	s.Names = names
	return s, nil
}

// prepare creates the output directory and checks that no share file would
// be overwritten, before the module is changed.
func (s *shareSet) prepare() error {
	paths, err := prepareOutDir(s.Out, s.Names)
	if err != nil {
		return err
	}
	s.Paths = paths
	return nil
}

// write writes each share to its file, 0600: encrypted to its custodian's
// age recipient when one was given, as printable text otherwise.
func (s shareSet) write(shares []hsm.Share) error {
	if len(shares) != len(s.Paths) {
		return fmt.Errorf("module returned %d shares, expected %d", len(shares), len(s.Paths))
	}
	for i, sh := range shares {
		var data []byte
		if i < len(s.Custodians) {
			sh.Custodian = s.Custodians[i].Name
		}
		if i < len(s.Custodians) && s.Custodians[i].Recipient != "" {
			enc, err := hsm.EncodeAge(sh, s.Custodians[i].Recipient)
			if err != nil {
				return fmt.Errorf("encrypt share %d to custodian %s: %w", sh.Index, s.Custodians[i].Name, err)
			}
			data = enc
		} else {
			data = []byte(hsm.EncodeText(sh))
		}
		if err := writeNewFile(s.Paths[i], data); err != nil {
			return fmt.Errorf("write share %d: %w", sh.Index, err)
		}
	}
	return nil
}

// describe prints which file holds which share.
func (s shareSet) describe(e *env) {
	for i, p := range s.Paths {
		who := ""
		if i < len(s.Custodians) {
			who = "  custodian " + s.Custodians[i].Name
			if s.Custodians[i].Recipient != "" {
				who += " (age-encrypted)"
			}
		}
		fmt.Fprintf(e.stdout, "  share %d: %s%s\n", i+1, p, who)
	}
}
