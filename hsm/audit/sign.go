package audit

import (
	"fmt"
	"time"
)

// Ticket names a signature record written by BeginSign.
type Ticket struct{ seq uint64 }

// Seq is the record's sequence number.
func (t Ticket) Seq() uint64 { return t.seq }

// BeginSign records one signature: a "sign" event of partition with fields
// key, digest (hex of digest) and hash (hashName). It gives the record its
// place in the chain and queues its frame; the caller computes the
// signature next and must call Wait before it releases the signature. Wait
// writes the record if no other caller's Wait or the flusher has done so
// meanwhile: records of concurrent signatures share one write(2).
//
// Each field is at most 255 bytes; partition, key and hashName must be
// UTF-8. For a signature over a whole message (Ed25519), record a digest
// of the message.
func (l *Log) BeginSign(partition, key, hashName string, digest []byte) (Ticket, error) {
	if err := checkSignFields(partition, key, hashName, digest); err != nil {
		return Ticket{}, err
	}
	now := l.clock().UnixNano()
	for range 2 {
		l.mu.Lock()
		if l.torn != nil || l.closed || l.broken != nil {
			err := l.signBlockedLocked()
			l.mu.Unlock()
			if err != nil {
				return Ticket{}, err
			}
			if err := l.Recover(); err != nil {
				return Ticket{}, err
			}
			continue
		}
		seq := l.seq + 1
		h := signHash(seq, now, partition, key, hashName, digest, &l.prev)
		l.pendLast = len(l.pend)
		l.pend = appendSignFrame(l.pend, seq, now, &h, partition, key, hashName, digest)
		l.seq, l.prev = seq, h
		l.mu.Unlock()
		return Ticket{seq: seq}, nil
	}
	return Ticket{}, fmt.Errorf("audit: log refuses appends: %w", l.tornError())
}

// writeBatch is a write(2) of pending frames in progress; done is closed
// when it is over.
type writeBatch struct {
	done chan struct{}
}

// writePending returns once record upto is written. If nobody is writing,
// this goroutine becomes the writer (it installs its batch in l.inflight)
// and writes every pending frame with one write(2), without holding mu
// during the call, so that signers keep queueing; otherwise it waits for
// the write in progress (all its waiters wake at once) and looks again.
// Waiting and looking take no lock: a signer takes mu once, in BeginSign,
// and the writer twice per batch, so that a write's many waiters do not
// queue for mu when it ends.
func (l *Log) writePending(upto uint64) error {
	for {
		if l.written.Load() >= upto {
			return nil
		}
		if l.failed.Load() {
			return l.refusal()
		}
		if b := l.inflight.Load(); b != nil {
			<-b.done
			continue
		}
		b := &writeBatch{done: make(chan struct{})}
		if !l.inflight.CompareAndSwap(nil, b) {
			continue
		}
		err := l.writeBatchOwned()
		l.inflight.Store(nil)
		close(b.done)
		if err != nil {
			return err
		}
		if !l.scheduled.Load() && !l.scheduled.Swap(true) {
			l.kickFlusher()
		}
	}
}

// writeBatchOwned writes the pending frames. Called by the goroutine whose
// batch is in l.inflight; only it takes pending frames off l.pend (outside
// appendLocked, which holds mu throughout and finds no batch in flight
// when it writes).
func (l *Log) writeBatchOwned() error {
	l.mu.Lock()
	if l.broken != nil {
		l.mu.Unlock()
		return l.refusal()
	}
	if len(l.pend) == 0 {
		l.mu.Unlock()
		return nil
	}
	batch, off, last := l.pend, l.off, l.off+int64(l.pendLast)
	seq, h := l.seq, l.prev // every assigned record is in the batch
	l.pend, l.spare = l.spare[:0], nil
	seg := l.seg
	l.mu.Unlock()
	_, err := seg.WriteAt(batch, off)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		err = fmt.Errorf("audit: write signature records to %d: %w", seq, err)
		l.logger.Error("audit write failed; module refuses further audited operations", "err", err)
		l.failLocked(err)
		return err
	}
	l.off += int64(len(batch))
	l.wseq, l.whash, l.lastRec = seq, h, last
	l.spare = batch[:0]
	l.written.Store(seq)
	return nil
}

// refusal is the error of a log that refuses appends.
func (l *Log) refusal() error {
	l.mu.Lock()
	err := l.broken
	l.mu.Unlock()
	if err == nil {
		err = ErrClosed
	}
	return fmt.Errorf("audit: log refuses appends: %w", err)
}

// waitInflightLocked waits until no write is in progress. Called with mu
// held; it may release and retake it. A writer may install its batch
// after this returns, but it cannot take frames off l.pend before the
// caller releases mu.
func (l *Log) waitInflightLocked() {
	for {
		b := l.inflight.Load()
		if b == nil {
			return
		}
		l.mu.Unlock()
		<-b.done
		l.mu.Lock()
	}
}

// writeHeldLocked writes the pending frames while holding mu (for the rare
// database appends). Called with mu held and no write in progress.
func (l *Log) writeHeldLocked() error {
	if len(l.pend) == 0 {
		return nil
	}
	if _, err := l.seg.WriteAt(l.pend, l.off); err != nil {
		err = fmt.Errorf("audit: write signature records to %d: %w", l.seq, err)
		l.failLocked(err)
		return err
	}
	l.lastRec = l.off + int64(l.pendLast)
	l.off += int64(len(l.pend))
	l.wseq, l.whash = l.seq, l.prev
	l.pend = l.pend[:0]
	l.written.Store(l.seq)
	return nil
}

// signBlockedLocked says why BeginSign cannot write now; nil means only a
// torn end is in the way (Recover it). Called with mu held.
func (l *Log) signBlockedLocked() error {
	switch {
	case l.closed:
		return ErrClosed
	case l.broken != nil:
		return fmt.Errorf("audit: log refuses appends: %w", l.broken)
	}
	return nil
}

func (l *Log) tornError() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.torn != nil {
		return l.torn.auditError()
	}
	return l.broken
}

// Wait returns once the ticket's record may be acted on: it is written
// (by this call, if nobody has written it yet), and at most MaxUnsynced
// records are written but not yet synced (otherwise Wait blocks until the
// flusher has caught up). It fails if the log broke before the record was
// synced; the caller must then withhold the signature.
func (l *Log) Wait(t Ticket) error {
	if l.written.Load() < t.seq {
		if err := l.writePending(t.seq); err != nil {
			return err
		}
	}
	if !l.failed.Load() && t.seq <= l.synced.Load()+l.maxUnsynced {
		// The flusher is a goroutine like any other: with many signers
		// queued for the CPUs it can be scheduled late. A signer that
		// finds the sync overdue does it itself (if nobody is syncing).
		if l.written.Load() > l.synced.Load() && time.Now().UnixNano()-l.lastFlush.Load() > overdue*int64(l.interval) {
			l.tryFlush()
		}
		return nil
	}
	// Over the bound: sync now, or wait for the sync in progress.
	// Counted before the kick, so that the flusher skips its interval.
	l.waiters.Add(1)
	for !l.failed.Load() && t.seq > l.synced.Load()+l.maxUnsynced {
		if l.tryFlush() {
			continue
		}
		l.kickFlusher()
		l.syncMu.Lock()
		if !l.failed.Load() && t.seq > l.synced.Load()+l.maxUnsynced {
			l.syncCond.Wait()
		}
		l.syncMu.Unlock()
	}
	l.waiters.Add(-1)
	if l.failed.Load() && t.seq > l.synced.Load() {
		l.mu.Lock()
		err := l.broken
		l.mu.Unlock()
		return fmt.Errorf("audit: record %d not synced: %w", t.seq, err)
	}
	return nil
}

// overdue is how many flush intervals may pass before a signer does the
// flusher's work.
const overdue = 4

// tryFlush flushes unless a flush is in progress; it reports whether it
// did.
func (l *Log) tryFlush() bool {
	if !l.flushMu.TryLock() {
		return false
	}
	l.lastFlush.Store(time.Now().UnixNano())
	_ = l.flushLocked() // failures are sticky and logged
	l.flushMu.Unlock()
	return true
}

func (l *Log) kickFlusher() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// markSynced records that records up to seq are synced and wakes waiting
// signers. Called with flushMu held, so seq only grows.
func (l *Log) markSynced(seq uint64) {
	if seq > l.synced.Load() {
		l.synced.Store(seq)
	}
	if l.waiters.Load() > 0 {
		l.wakeWaiters()
	}
}

func (l *Log) wakeWaiters() {
	l.syncMu.Lock()
	l.syncCond.Broadcast()
	l.syncMu.Unlock()
}

// flusher syncs the segment and signs a new head when records are waiting,
// at most once per interval, so that records written meanwhile share one
// sync.
func (l *Log) flusher() {
	defer close(l.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	last := time.Now()
	for {
		select {
		case <-l.kick:
		case <-l.stop:
			return
		}
		// Wait out the interval, unless a signer is blocked on the
		// backlog bound: then it kicks again and the flush starts at once.
		for l.waiters.Load() == 0 {
			d := l.interval - time.Since(last)
			if d <= 0 {
				break
			}
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-l.kick:
				timer.Stop()
			case <-l.stop:
				timer.Stop()
				return
			}
		}
		last = time.Now()
		// Records written from here on kick again.
		l.scheduled.Store(false)
		l.flushMu.Lock()
		l.lastFlush.Store(last.UnixNano())
		_ = l.flushLocked() // failures are sticky and logged
		l.flushMu.Unlock()
	}
}

// Sync makes every record queued so far durable and covers it with a new
// signed head, itself durable.
func (l *Log) Sync() error {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	return l.syncLocked()
}

func (l *Log) syncLocked() error {
	if err := l.flushLocked(); err != nil {
		return err
	}
	if !l.slotDirty {
		return nil
	}
	l.mu.Lock()
	seg := l.seg
	l.mu.Unlock()
	if err := seg.Sync(); err != nil {
		return l.fail(fmt.Errorf("audit: sync segment: %w", err))
	}
	l.slotDirty = false
	return nil
}

// flushLocked writes the queued frames, syncs the segment up to its end
// and writes a signed head for the last record into the older head slot.
// That slot becomes durable with the next sync, so a head never covers a
// record a power loss could take. Called with flushMu held.
func (l *Log) flushLocked() error {
	l.mu.Lock()
	upto := l.seq
	l.mu.Unlock()
	if err := l.writePending(upto); err != nil { // frames whose Wait has not come yet
		return err
	}
	l.mu.Lock()
	seq, prev, off, last, broken, seg := l.wseq, l.whash, l.off, l.lastRec, l.broken, l.seg
	l.mu.Unlock()
	if broken != nil {
		return broken
	}
	if seq <= l.headSeq {
		return nil
	}
	if off > l.syncedOff || l.slotDirty {
		if err := seg.Sync(); err != nil {
			return l.fail(fmt.Errorf("audit: sync segment: %w", err))
		}
		l.syncedOff, l.slotDirty = off, false
	}
	l.markSynced(seq)
	sh := l.signHead(seq, prev, off, last)
	if _, err := seg.WriteAt(encodeSlot(&sh), slotOffset+int64(l.slotNext)*slotLen); err != nil {
		return l.fail(fmt.Errorf("audit: write head %d: %w", seq, err))
	}
	l.slotNext ^= 1
	l.slotDirty = true
	l.headSeq = seq
	return nil
}

func (l *Log) fail(err error) error {
	l.logger.Error("audit flush failed; module refuses further audited operations", "err", err)
	l.mu.Lock()
	l.failLocked(err)
	l.mu.Unlock()
	return err
}
