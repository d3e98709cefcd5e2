package cli

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"text/tabwriter"
)

// writeJSON prints v as indented JSON followed by a newline: the --json
// output of status, list and verify commands, meant for scripts.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// newTable returns a tabwriter for aligned, human-readable columns; callers
// must Flush it.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
}

// publicKeyPEM encodes pub as a PEM "PUBLIC KEY" block (PKIX,
// RFC 5280 SubjectPublicKeyInfo).
func publicKeyPEM(pub crypto.PublicKey) (string, error) {
	if pub == nil {
		return "", errors.New("no public key")
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("encode public key: %w", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), nil
}

// writeNewFile writes data to path with mode 0600, refusing to overwrite an
// existing file. Files written by the hsm commands (shares, wrapped keys) go
// to people or other modules; they are never replaced silently.
//
// The data goes to a temporary file in the same directory, which is synced
// and then linked to path (a link never replaces a file), and the
// directory is synced: path is either absent or complete and durable,
// whatever happens on the way (a full disk, a kill, a power loss).
//
// On a file system without hard links (vfat and exFAT, the usual USB
// sticks) the file is created exclusively under its name and written
// there (writeExclusive): an error still leaves nothing, but a crash or
// power loss while it is written can leave a partial file under its name.
func writeNewFile(path string, data []byte) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*") // mode 0600
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := linkFile(tmp, path); err != nil {
		if errors.Is(err, os.ErrExist) {
			return outputExists(path)
		}
		if !noHardLinks(err) {
			return fmt.Errorf("write %s: %w", path, err)
		}
		os.Remove(tmp) // before the copy: the medium may be small
		if err := writeExclusive(path, data); err != nil {
			return err
		}
		return syncDirOrRemove(dir, path)
	}
	if err := os.Remove(tmp); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDirOrRemove(dir, path)
}

// syncDirOrRemove syncs dir after path was created in it, and removes path
// if that fails.
func syncDirOrRemove(dir, path string) error {
	if err := syncDir(dir); err != nil {
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// linkFile is os.Link. Tests replace it to act as a file system without
// hard links.
var linkFile = os.Link

// noHardLinks reports whether err, from linkFile, says that the file
// system cannot make the link at all (vfat and exFAT answer EPERM, others
// ENOTSUP or EOPNOTSUPP; EXDEV where the staging directory is another
// mount), so that writing the file under its name is the way left.
func noHardLinks(err error) bool {
	return errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.ENOTSUP) ||
		errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.EXDEV)
}

// writeExclusive creates path (0600; refusing an existing file), writes
// data to it and syncs it, removing it again if any step fails. The caller
// syncs the directory.
func writeExclusive(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return outputExists(path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// outputExists is the refusal to overwrite path.
func outputExists(path string) error {
	return withHint(fmt.Errorf("%s already exists; refusing to overwrite it", path), "choose another output path or move the existing file away")
}

// checkNewFile checks, before a command does what it cannot undo (gather a
// quorum, sign, store), that writeNewFile(path) can succeed: path does not
// exist, and its directory exists and takes new files (a file is created
// in it and removed). writeNewFile checks again when it writes.
func checkNewFile(path string) error {
	if _, err := os.Lstat(path); err == nil {
		return outputExists(path)
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("cannot write %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	if err := checkWritableDir(dir); err != nil {
		return withHint(fmt.Errorf("cannot write %s: %w", path, err), "--out must name a new file in an existing, writable directory")
	}
	return nil
}

// syncDir makes the entries of dir (files created, linked or removed)
// durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// stagedFiles is a set of new files that appear together: they are
// written under a private directory inside their final directory, then
// linked into place by place. Until then none of them is under its final
// name; if placing one fails, those placed are removed again.
type stagedFiles struct {
	dir    string   // the final directory
	stage  string   // the private directory inside it
	finals []string // final paths, all in dir
	placed []string // final paths linked so far
}

// stageFiles makes a private directory (0700) in dir for files that will
// be placed at finals, which must all be in dir.
func stageFiles(dir string, finals []string) (*stagedFiles, error) {
	for _, p := range finals {
		if filepath.Clean(filepath.Dir(p)) != filepath.Clean(dir) {
			return nil, fmt.Errorf("internal error: %s is not in %s", p, dir)
		}
	}
	stage, err := os.MkdirTemp(dir, ".hsmca-new-")
	if err != nil {
		return nil, fmt.Errorf("create a staging directory in %s: %w", dir, err)
	}
	return &stagedFiles{dir: dir, stage: stage, finals: finals}, nil
}

// paths returns where each file is to be written before place.
func (s *stagedFiles) paths() []string {
	out := make([]string, len(s.finals))
	for i, p := range s.finals {
		out[i] = filepath.Join(s.stage, filepath.Base(p))
	}
	return out
}

// place links every staged file to its final path, never replacing a
// file, syncs the directory and removes the staging directory. If a file
// cannot be placed, the ones placed before it are removed and the error
// returned; the staged files stay until discard.
//
// On a file system without hard links each file is instead written to its
// final name from its staged copy (writeExclusive): an error still leaves
// none of them, but a crash while they are written can leave one partial
// file under its name, beside complete ones (a set that never came into
// force; see docs/hsm.md).
func (s *stagedFiles) place() error {
	copying := false
	for i, p := range s.paths() {
		final := s.finals[i]
		var err error
		if !copying {
			if err = linkFile(p, final); err != nil && noHardLinks(err) {
				copying = true
			}
		}
		if copying {
			err = copyExclusive(p, final)
		}
		if err != nil {
			if errors.Is(err, os.ErrExist) {
				err = fmt.Errorf("%s already exists; refusing to overwrite it", final)
			}
			return errors.Join(err, s.unplace())
		}
		s.placed = append(s.placed, final)
	}
	if err := syncDir(s.dir); err != nil {
		return errors.Join(err, s.unplace())
	}
	// The files are durable under their final names: the staging
	// directory only holds second links to them, or copies.
	if err := os.RemoveAll(s.stage); err == nil {
		_ = syncDir(s.dir)
	}
	return nil
}

// copyExclusive writes the content of the staged file from to the new
// file to (writeExclusive).
func copyExclusive(from, to string) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return fmt.Errorf("write %s: %w", to, err)
	}
	defer clear(data) // a share
	return writeExclusive(to, data)
}

// unplace removes the files placed so far.
func (s *stagedFiles) unplace() error {
	var errs []error
	for _, p := range s.placed {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	s.placed = nil
	if len(errs) == 0 {
		errs = append(errs, syncDir(s.dir))
	}
	return errors.Join(errs...)
}

// discard removes every file of the set, staged or placed, and the staging
// directory.
func (s *stagedFiles) discard() error {
	err := s.unplace()
	if rerr := os.RemoveAll(s.stage); rerr != nil {
		err = errors.Join(err, rerr)
	} else if err == nil {
		err = syncDir(s.dir)
	}
	return err
}

// prepareOutDir creates dir (0700) if needed and checks that none of names
// exists in it yet and that it takes new files, so that a command fails
// before it changes the module rather than after.
func prepareOutDir(dir string, names []string) ([]string, error) {
	if dir == "" {
		return nil, usagef("--out DIR is required")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create output directory: %w", err)
	}
	paths := make([]string, len(names))
	for i, n := range names {
		paths[i] = filepath.Join(dir, n)
		if _, err := os.Lstat(paths[i]); err == nil {
			return nil, withHint(fmt.Errorf("%s already exists; refusing to overwrite a share file", paths[i]),
				"use an empty --out directory")
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	if err := checkWritableDir(dir); err != nil {
		return nil, withHint(fmt.Errorf("cannot write to %s: %w", dir, err), "--out must be a directory this user can create files in")
	}
	return paths, nil
}

// checkWritableDir writes probeBytes to a new file in dir, syncs it and
// removes it again, so that a directory that takes no new files
// (read-only, full, not ours) is found before a command changes the
// module, not after. An empty file would not do: a full file system still
// takes one.
func checkWritableDir(dir string) error {
	f, err := os.CreateTemp(dir, ".hsmca-check-*")
	if err != nil {
		return err
	}
	name := f.Name()
	_, err = f.Write(make([]byte, probeBytes))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if rerr := os.Remove(name); err == nil {
		err = rerr
	}
	return err
}

// probeBytes is what checkWritableDir writes: one page, about what one
// share file, wrapped key or certificate chain takes. It finds a full file
// system; one that fills up part way through several files is still only
// found by the writes (and the commands then say what was written).
const probeBytes = 4 << 10
