//go:build !linux || !(amd64 || arm64 || riscv64 || loong64 || ppc64le)

package audit

import (
	"errors"
	"os"
)

// Elsewhere the flusher syncs the segment with fsync(2) (File.Sync).

type aioSyncer struct{}

func newAIOSyncer() *aioSyncer { return nil }

var errAIOUnsupported = errors.New("audit: AIO fsync not supported")

func (*aioSyncer) sync(*os.File) error { return errAIOUnsupported }

func (*aioSyncer) close() {}
