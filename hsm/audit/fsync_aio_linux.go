//go:build linux && (amd64 || arm64 || riscv64 || loong64 || ppc64le)

package audit

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"
)

// The flusher's fsync is submitted through Linux AIO (IOCB_CMD_FSYNC,
// which the kernel runs on a worker thread), and the flusher waits for
// its completion on an eventfd through the Go runtime's network poller.
// A plain fsync(2) blocks the flusher's thread in the kernel while it
// holds a scheduler P for 0.5 to several ms; on a small machine the
// runtime then takes the P of a signer that is in a cgo call (a PKCS#11
// signature) and hands it around between threads, every flush. Waiting in
// the poller gives the P back at once. The fsync itself, and so what is
// durable when it completes, is the same.

// aioSyncer syncs one file at a time through one AIO context. Its methods
// are called with the log's flushMu held.
type aioSyncer struct {
	ctx  uintptr  // aio_context_t
	efd  int      // eventfd (non-blocking), signalled on completion
	ev   *os.File // efd, registered with the poller
	cb   iocb
	out  ioEvent
	wake [8]byte
}

// iocb is struct iocb of <linux/aio_abi.h> on a little-endian 64-bit
// machine.
type iocb struct {
	data      uint64
	key       uint32
	rwFlags   int32
	opcode    uint16
	reqPrio   int16
	fd        uint32
	buf       uint64
	nbytes    uint64
	offset    int64
	reserved2 uint64
	flags     uint32
	resfd     uint32
}

// ioEvent is struct io_event.
type ioEvent struct {
	data uint64
	obj  uint64
	res  int64
	res2 int64
}

const (
	iocbCmdFsync  = 2
	iocbFlagResfd = 1
	efdNonblock   = syscall.O_NONBLOCK
	efdCloexec    = syscall.O_CLOEXEC
)

// newAIOSyncer returns nil where AIO is not available; syncs then use
// fsync(2).
func newAIOSyncer() *aioSyncer {
	var ctx uintptr
	if _, _, errno := syscall.Syscall(syscall.SYS_IO_SETUP, 1, uintptr(unsafe.Pointer(&ctx)), 0); errno != 0 {
		return nil
	}
	fd, _, errno := syscall.Syscall(syscall.SYS_EVENTFD2, 0, efdNonblock|efdCloexec, 0)
	if errno != 0 {
		syscall.Syscall(syscall.SYS_IO_DESTROY, ctx, 0, 0)
		return nil
	}
	return &aioSyncer{ctx: ctx, efd: int(fd), ev: os.NewFile(fd, "audit-fsync-eventfd")}
}

// errAIOUnsupported: the file cannot be synced through AIO; use fsync(2).
var errAIOUnsupported = errors.New("audit: AIO fsync not supported")

// sync fsyncs f and returns when the fsync has completed, with its
// result.
func (s *aioSyncer) sync(f *os.File) error {
	s.cb = iocb{opcode: iocbCmdFsync, fd: uint32(f.Fd()), flags: iocbFlagResfd, resfd: uint32(s.efd)}
	p := &s.cb
	n, _, errno := syscall.Syscall(syscall.SYS_IO_SUBMIT, s.ctx, 1, uintptr(unsafe.Pointer(&p)))
	if errno != 0 || n != 1 {
		return errAIOUnsupported
	}
	// Wait in the poller. Should reading the eventfd fail, the request
	// is still in flight: wait for it in io_getevents instead.
	_, _ = s.ev.Read(s.wake[:])
	for {
		n, _, errno = syscall.Syscall6(syscall.SYS_IO_GETEVENTS, s.ctx, 1, 1, uintptr(unsafe.Pointer(&s.out)), 0, 0)
		if errno == syscall.EINTR {
			continue
		}
		if errno != 0 || n != 1 {
			return fmt.Errorf("audit: collect AIO fsync: %w", errno)
		}
		break
	}
	if s.out.res < 0 {
		return syscall.Errno(-s.out.res)
	}
	return nil
}

func (s *aioSyncer) close() {
	syscall.Syscall(syscall.SYS_IO_DESTROY, s.ctx, 0, 0)
	s.ev.Close()
}
