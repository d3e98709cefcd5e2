package ceremony

import (
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// output is one file a ceremony writes: a PEM block and its transcript
// entry. Every output is public (certificates, CRLs, public keys), so its
// mode is 0644; a ceremony writes no secret.
type output struct {
	path      string
	blockType string
	der       []byte
	record    TranscriptOutput
}

const outputMode os.FileMode = 0o644

// tempPattern names the temporary files of outputs being written.
const tempPattern = ".ceremony-output-*.tmp"

// checkOutputs refuses, before the module is touched, an output that
// exists already or whose directory does not exist or takes no new files
// (a file is created there and removed).
func checkOutputs(paths ...string) error {
	for _, out := range paths {
		if out == "" {
			continue
		}
		if _, err := os.Lstat(out); err == nil {
			return fmt.Errorf("ceremony: output %s already exists; a ceremony never overwrites (move it away or name another output)", out)
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("ceremony: output %s: %w", out, err)
		}
		dir := filepath.Dir(out)
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return fmt.Errorf("ceremony: output directory %s does not exist", dir)
		}
		if err := probeDir(dir); err != nil {
			return fmt.Errorf("ceremony: cannot write output %s: %w", out, err)
		}
	}
	return nil
}

// probeDir writes 4 KiB (about one certificate or CRL output) to a new
// file in dir, syncs it and removes it: a directory that is read-only or
// full is found before anything is signed (a full file system still takes
// an empty file).
func probeDir(dir string) error {
	f, err := os.CreateTemp(dir, tempPattern)
	if err != nil {
		return err
	}
	_, err = f.Write(make([]byte, 4<<10))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if rerr := os.Remove(f.Name()); err == nil {
		err = rerr
	}
	return err
}

// writeOutputs writes all of outs or none. Each is first written in full
// to a temporary file in its own directory and synced; only then are they
// hard-linked to their final names, which fails if a name exists (even one
// that appeared while the ceremony ran: a ceremony never overwrites). If a
// link fails, the outputs already linked are removed again. So a crash or
// an error leaves no partial file, and no lone part of a ceremony's
// outputs, under a final name. Finally the temporary names are removed and
// each directory is synced, so that the new names survive a power loss.
//
// On a file system without hard links (vfat and exFAT, the usual USB
// sticks) each output is instead created exclusively under its final name,
// written and synced (writeExclusive); an error still removes the outputs
// written, but a crash while one is written can leave it partial.
func writeOutputs(outs []output) error {
	var tmps []string
	defer func() {
		for _, t := range tmps {
			os.Remove(t)
		}
	}()
	for _, o := range outs {
		tmp, err := writeTemp(o)
		if err != nil {
			return err
		}
		tmps = append(tmps, tmp)
	}
	var linked []string
	copying := false
	for i, o := range outs {
		var err error
		if !copying {
			if err = linkFile(tmps[i], o.path); err != nil && noHardLinks(err) {
				copying = true
			}
		}
		if copying {
			err = writeExclusive(o)
		}
		if err != nil {
			for _, p := range linked {
				os.Remove(p)
			}
			if errors.Is(err, os.ErrExist) {
				return fmt.Errorf("ceremony: output %s appeared while the ceremony ran; nothing was written (a ceremony never overwrites)", o.path)
			}
			return fmt.Errorf("ceremony: write %s: %w; nothing was written", o.path, err)
		}
		linked = append(linked, o.path)
	}
	for _, t := range tmps {
		os.Remove(t)
	}
	tmps = nil
	synced := map[string]bool{}
	for _, o := range outs {
		dir := filepath.Dir(o.path)
		if synced[dir] {
			continue
		}
		synced[dir] = true
		if err := syncDir(dir); err != nil {
			return fmt.Errorf("ceremony: outputs written, but their directory %s could not be synced: %w", dir, err)
		}
	}
	return nil
}

// linkFile is os.Link. Tests replace it to act as a file system without
// hard links.
var linkFile = os.Link

// noHardLinks reports whether err, from linkFile, says that the file
// system cannot make the link at all: vfat and exFAT answer EPERM, others
// ENOTSUP or EOPNOTSUPP, and EXDEV crosses a mount.
func noHardLinks(err error) bool {
	return errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.ENOTSUP) ||
		errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.EXDEV)
}

// writeExclusive creates o.path (never replacing a file), writes o's PEM
// block to it and syncs it, removing it again if a step fails. Its mode is
// outputMode less the umask.
func writeExclusive(o output) error {
	f, err := os.OpenFile(o.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, outputMode)
	if err != nil {
		return err // os.ErrExist included, for the caller's message
	}
	err = pem.Encode(f, &pem.Block{Type: o.blockType, Bytes: o.der})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(o.path)
	}
	return err
}

// writeTemp writes o's PEM block to a new temporary file beside o.path,
// syncs it and returns its name.
func writeTemp(o output) (string, error) {
	// A short name of its own: one derived from a long output name could
	// exceed the file system's limit.
	f, err := os.CreateTemp(filepath.Dir(o.path), tempPattern)
	if err != nil {
		return "", fmt.Errorf("ceremony: write %s: %w", o.path, err)
	}
	name := f.Name()
	err = f.Chmod(outputMode)
	if err == nil {
		err = pem.Encode(f, &pem.Block{Type: o.blockType, Bytes: o.der})
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return "", fmt.Errorf("ceremony: write %s: %w", o.path, err)
	}
	return name, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
