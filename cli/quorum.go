package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"filippo.io/age"
	"filippo.io/age/armor"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/hsmca/hsmca/hsm"
)

// Gathering a quorum
//
// Activation lives in the memory of the process that uses a partition's
// keys. A command that runs directly on a module directory and needs an
// active partition (keys generate, reshare, export, ceremony steps, a CA
// started in the foreground, ...) therefore collects the quorum itself,
// through gatherQuorum:
//
//   - from share files given with --share FILE (repeatable, one per
//     custodian present). A file holds either the printable text form of a
//     share or the share encrypted to its custodian's age recipient (binary
//     or ASCII-armored); --identity FILE (repeatable) names the age identity
//     files that decrypt them. "--share -" reads one share from stdin.
//   - when no --share is given and stdin is a terminal, by prompting each
//     custodian in turn to type or paste their text share, without echo.
//
// Each share is presented to the partition as soon as it is read, so a bad
// share is named (by file and by the index printed on the share) before the
// next custodian is asked, and "share k of M accepted" is printed to stderr
// after each good one. Bad shares count towards the partition's lockout.
//
// A command wires it up in two lines:
//
//	var q quorumFlags
//	addQuorumFlags(cmd, &q)
//	...
//	if err := q.gather(e, p); err != nil { return err }

// maxShareFileSize bounds what is read from a share file; real shares are a
// few hundred bytes (age adds a small header).
const maxShareFileSize = 64 << 10

// maxPromptAttempts bounds how many unreadable or refused shares the
// interactive prompt accepts before giving up.
const maxPromptAttempts = 3

// maxShareLines bounds how many lines one typed share may span.
const maxShareLines = 32

// quorumFlags holds the --share and --identity flags of a command that
// needs an active partition.
type quorumFlags struct {
	shares     []string
	identities []string
}

// addQuorumFlags registers --share and --identity on cmd.
func addQuorumFlags(cmd *cobra.Command, q *quorumFlags) {
	cmd.Flags().StringArrayVar(&q.shares, "share", nil, "custodian share `FILE` (repeat once per custodian; text or age-encrypted; - for stdin); without it, prompts on a terminal")
	cmd.Flags().StringArrayVar(&q.identities, "identity", nil, "age identity `FILE` that decrypts age-encrypted shares (repeatable)")
}

// gather activates p with the shares named by the flags; see gatherQuorum.
func (q *quorumFlags) gather(e *env, p hsm.Partition) error {
	return gatherQuorum(e, p, q.shares, q.identities)
}

// gatherQuorum brings partition p to the active state using the share files
// in shares (decrypting age-encrypted ones with the identity files in
// identities), or, when shares is empty and e.stdin is a terminal, by
// prompting each custodian for their share without echo. It prints progress
// ("share k of M accepted") to e.stderr and returns nil once p is active.
//
// Errors name the share file (or prompt turn) and, for a refused share, the
// share index: an unreadable or undecryptable file, a share of another
// module, partition or generation, a duplicate, a share that fails its
// commitments, a locked-out partition, or too few shares for the quorum.
// Without shares and without a terminal it returns a usage error.
//
// For a per-operation partition, call p.SetOperationSignatures(n) before
// gatherQuorum when the operation needs more than one signature: the count
// applies to the next activation. If p is active already (a long-running
// process), gatherQuorum returns nil at once without reading any share.
func gatherQuorum(e *env, p hsm.Partition, shares, identities []string) error {
	st, err := p.Status()
	if err != nil {
		return err
	}
	if st.State == hsm.StateActive {
		return nil
	}
	if st.LockedUntil.After(time.Now()) {
		return lockedHint(&hsm.LockedError{Partition: p.Name(), Until: st.LockedUntil})
	}
	ids, err := loadIdentities(identities)
	if err != nil {
		return err
	}
	if len(shares) == 0 {
		if fd, ok := terminalFD(e.stdin); ok {
			return promptQuorum(e, p, st, func() ([]byte, error) { return readHidden(fd) })
		}
		return withHint(usagef("partition %s is sealed and needs %d of %d shares; none given", p.Name(), st.Threshold, st.Shares),
			fmt.Sprintf("pass --share FILE once per custodian (%d needed), or run on a terminal to be prompted", st.Threshold))
	}
	for i, path := range shares {
		s, err := readShareFile(e, path, ids)
		if err != nil {
			return err
		}
		st, err = presentShare(e, p, s, path)
		if err != nil {
			return err
		}
		if st.State == hsm.StateActive {
			if rest := len(shares) - i - 1; rest > 0 {
				fmt.Fprintf(e.stderr, "quorum reached; %d further share file(s) not needed\n", rest)
			}
			return nil
		}
	}
	return quorumShortError(p.Name(), st)
}

// presentShare hands one decoded share to p and reports progress. from
// names where the share came from (a file or a prompt turn).
func presentShare(e *env, p hsm.Partition, s hsm.Share, from string) (hsm.PartitionStatus, error) {
	st, err := p.AddShare(s)
	if err != nil {
		return st, shareRefused(p.Name(), from, s, err)
	}
	fmt.Fprintf(e.stderr, "share %d of %d accepted (%s)\n", st.Presented, st.Threshold, from)
	if st.State == hsm.StateActive {
		fmt.Fprintf(e.stderr, "partition %s is active\n", p.Name())
	}
	return st, nil
}

// shareRefused turns an AddShare error into one that names the share.
func shareRefused(partition, from string, s hsm.Share, err error) error {
	var locked *hsm.LockedError
	if errors.As(err, &locked) {
		return lockedHint(fmt.Errorf("%s: %w", from, err))
	}
	var se *hsm.ShareError
	if errors.As(err, &se) {
		if se.WrongModule {
			return withHint(fmt.Errorf("%s: %w", from, err), "this share belongs to another module, partition or share generation (after a reshare only the new shares work)")
		}
		return fmt.Errorf("%s: %w", from, err)
	}
	if errors.Is(err, hsm.ErrDuplicateShare) {
		return withHint(fmt.Errorf("%s: %w", from, err), "each custodian's share counts once; present shares of different custodians")
	}
	return fmt.Errorf("%s: %w", from, err)
}

func lockedHint(err error) error {
	return withHint(err, "the partition refuses shares after repeated bad ones; wait until the time shown, then check each share with `hsmca hsm activate`")
}

// quorumShortError says how many shares are still missing.
func quorumShortError(partition string, st hsm.PartitionStatus) error {
	missing := st.Threshold - st.Presented
	return withHint(fmt.Errorf("%d of %d shares presented; partition %s needs %d more to activate", st.Presented, st.Threshold, partition, missing),
		fmt.Sprintf("pass --share FILE for %d more custodian(s)", missing))
}

// loadIdentities reads age identity files.
func loadIdentities(paths []string) ([]age.Identity, error) {
	var ids []age.Identity
	for _, path := range paths {
		data, err := readLimited(path, nil)
		if err != nil {
			return nil, fmt.Errorf("identity file %s: %w", path, err)
		}
		got, err := age.ParseIdentities(bytes.NewReader(data))
		if err != nil {
			// age's parse errors never quote key material.
			return nil, withHint(fmt.Errorf("identity file %s: %w", path, err), "an identity file holds AGE-SECRET-KEY-1... lines, as written by age-keygen")
		}
		ids = append(ids, got...)
	}
	return ids, nil
}

// readShareFile reads and decodes one share file ("-" is stdin). When "-"
// is a terminal the custodian is prompted and types without echo, as in
// promptQuorum: read as a file, the share would show on the screen and the
// command would wait for end-of-file without saying so.
func readShareFile(e *env, path string, ids []age.Identity) (hsm.Share, error) {
	if path == "-" {
		if fd, ok := terminalFD(e.stdin); ok {
			return readTerminalShare(e, fd, ids)
		}
	}
	data, err := readLimited(path, e.stdin)
	if err != nil {
		return hsm.Share{}, fmt.Errorf("share file %s: %w", path, err)
	}
	s, err := decodeShare(data, ids)
	if err == nil && path != "-" && !isAge(bytes.TrimLeft(data, " \t\r\n")) {
		if fi, serr := os.Stat(path); serr == nil && fi.Mode().Perm()&0o077 != 0 {
			fmt.Fprintf(e.stderr, "warning: plain-text share file %s is readable by other users (mode %04o); chmod 600 it\n", path, fi.Mode().Perm())
		}
	}
	if err != nil {
		err = fmt.Errorf("share file %s: %w", path, err)
		if errors.Is(err, errNeedIdentity) {
			return hsm.Share{}, withHint(err, "pass the custodian's age identity file with --identity FILE")
		}
		return hsm.Share{}, err
	}
	return s, nil
}

// readTerminalShare reads one share typed or pasted on the terminal fd
// without echo ("--share -" on a terminal): the text form, or an armored
// age share decrypted with ids.
func readTerminalShare(e *env, fd int, ids []age.Identity) (hsm.Share, error) {
	fmt.Fprintln(e.stderr, "share from stdin: type or paste your share and end with an empty line (input is hidden):")
	text, err := readTypedShare(func() ([]byte, error) { return readHidden(fd) })
	if err != nil {
		return hsm.Share{}, fmt.Errorf("share from stdin: %w", err)
	}
	s, err := decodeShare([]byte(text), ids)
	if err != nil {
		err = fmt.Errorf("share from stdin: %w", err)
		if errors.Is(err, errNeedIdentity) {
			return hsm.Share{}, withHint(err, "pass the custodian's age identity file with --identity FILE")
		}
		return hsm.Share{}, err
	}
	return s, nil
}

// readHidden reads one line from the terminal fd without echo. An
// interrupt (Ctrl-C) while it waits puts the terminal back as it was
// before the process exits with status 130, as a shell expects;
// otherwise the custodian's terminal would be left without echo.
func readHidden(fd int) ([]byte, error) {
	state, err := term.GetState(fd)
	if err != nil {
		return nil, err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case <-sig:
			term.Restore(fd, state)
			os.Exit(130)
		case <-done:
		}
	}()
	defer func() {
		signal.Stop(sig)
		close(done)
	}()
	return term.ReadPassword(fd)
}

// errNeedIdentity reports an age-encrypted share without identities.
var errNeedIdentity = errors.New("share is age-encrypted and no --identity was given")

// decodeShare decodes a share file's contents: age-encrypted (binary or
// armored) when it starts like an age file, the text form otherwise. It is
// the CLI's parser of outside input for shares (see FuzzDecodeShare).
func decodeShare(data []byte, ids []age.Identity) (hsm.Share, error) {
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if isAge(trimmed) {
		if len(ids) == 0 {
			return hsm.Share{}, errNeedIdentity
		}
		return hsm.DecodeAge(trimmed, ids...)
	}
	return hsm.DecodeText(string(data))
}

func isAge(b []byte) bool {
	return bytes.HasPrefix(b, []byte("age-encryption.org/")) || bytes.HasPrefix(b, []byte(armor.Header))
}

// readLimited reads at most maxShareFileSize bytes from path, or from stdin
// when path is "-" and stdin is not nil.
func readLimited(path string, stdin io.Reader) ([]byte, error) {
	var r io.Reader
	if path == "-" && stdin != nil {
		r = stdin
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, maxShareFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxShareFileSize {
		return nil, fmt.Errorf("larger than %d bytes; not a share", maxShareFileSize)
	}
	return data, nil
}

// terminalFD returns stdin's file descriptor when it is a terminal.
func terminalFD(r io.Reader) (int, bool) {
	f, ok := r.(*os.File)
	if !ok {
		return 0, false
	}
	fd := int(f.Fd())
	return fd, term.IsTerminal(fd)
}

// promptQuorum asks each custodian in turn for their text share, reading
// lines with readLine (term.ReadPassword: no echo), until p is active. A share that does not decode or is
// refused is reported and the custodian may try again, at most
// maxPromptAttempts times in all; a lockout ends the prompt at once.
func promptQuorum(e *env, p hsm.Partition, st hsm.PartitionStatus, readLine func() ([]byte, error)) error {
	failures := 0
	for turn := 1; st.State != hsm.StateActive; turn++ {
		if failures >= maxPromptAttempts {
			return quorumShortError(p.Name(), st)
		}
		fmt.Fprintf(e.stderr, "partition %s: custodian %d of %d, type or paste your share and end with an empty line (input is hidden):\n",
			p.Name(), st.Presented+1, st.Threshold)
		text, err := readTypedShare(readLine)
		if err != nil {
			return fmt.Errorf("read share: %w", err)
		}
		from := fmt.Sprintf("typed share #%d", turn)
		s, err := hsm.DecodeText(text)
		if err != nil {
			failures++
			fmt.Fprintf(e.stderr, "%s not accepted: %v\n", from, err)
			continue
		}
		next, err := presentShare(e, p, s, from)
		if err != nil {
			var locked *hsm.LockedError
			if errors.As(err, &locked) {
				return err
			}
			failures++
			fmt.Fprintf(e.stderr, "%v\n", err)
			continue
		}
		st = next
	}
	return nil
}

// readTypedShare reads lines until one is empty (after at least one
// non-empty line) or the share decodes, at most maxShareLines.
func readTypedShare(readLine func() ([]byte, error)) (string, error) {
	var b strings.Builder
	for range maxShareLines {
		line, err := readLine()
		if err != nil {
			return "", err
		}
		l := strings.TrimSpace(string(line))
		if l == "" {
			if b.Len() == 0 {
				continue
			}
			break
		}
		b.WriteString(l)
		b.WriteByte('\n')
		if _, err := hsm.DecodeText(b.String()); err == nil {
			break
		}
	}
	return b.String(), nil
}

// partitionOfShares returns the partition named inside the first share
// file of q, when the module has a partition of that name, or "" (the
// caller then falls back to its default; read errors are reported when the
// shares are presented). Stdin ("-") is not read here.
func partitionOfShares(m hsm.Module, q quorumFlags) string {
	if len(q.shares) == 0 || q.shares[0] == "-" {
		return ""
	}
	ids, err := loadIdentities(q.identities)
	if err != nil {
		return ""
	}
	data, err := readLimited(q.shares[0], nil)
	if err != nil {
		return ""
	}
	s, err := decodeShare(data, ids)
	if err != nil || s.Module != m.ID() {
		return ""
	}
	if _, err := m.Partition(s.Partition); err != nil {
		return ""
	}
	return s.Partition
}
