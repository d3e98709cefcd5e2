package acme

import (
	"context"
	"time"
)

// Pruner is implemented by a Store that can delete ACME records nobody
// needs any more. The server runs it periodically when the store has it
// and Config.Retention is not negative. Which records go is decided by
// the policy's Prune* methods; the store only applies them, re-checking
// each record in the transaction that deletes it.
type Pruner interface {
	// PruneACME deletes, in short transactions of at most p.Batch
	// deletions each, the orders, authorizations and certificate links
	// that the policy lets go, up to p.MaxDeletes in one call. Each
	// transaction deletes whole records with their index entries and
	// work records, so a crash between two leaves a consistent store.
	PruneACME(ctx context.Context, p PrunePolicy) (PruneStats, error)
}

// PrunePolicy says which records may be deleted at Now.
type PrunePolicy struct {
	Now time.Time
	// Retention is how long a record is kept after it stopped being
	// usable (an order or authorization expired, a certificate expired).
	Retention time.Duration
	// Batch bounds the deletions of one write transaction; MaxDeletes
	// those of one pass.
	Batch      int
	MaxDeletes int
}

// Default bounds of a pass: a write transaction deletes at most
// pruneBatch records (a few ms of work, so requests queued behind it
// wait little), a pass at most pruneMaxDeletes; what is left waits for the
// next pass.
const (
	pruneBatch      = 256
	pruneMaxDeletes = 50000
	// pruneFirstDelay is when the first pass runs after New.
	pruneFirstDelay = time.Minute
)

func (p PrunePolicy) cutoff() time.Time { return p.Now.Add(-p.Retention) }

// PruneOrder reports whether o may be deleted: it expired more than
// Retention ago and is not processing (an issuance in flight owns it).
// A pending or ready order past its expiry is invalid (RFC 8555 §7.1.6);
// a valid one has handed out its certificate URL, which does not depend
// on the order (see PruneCert).
func (p PrunePolicy) PruneOrder(o *Order) bool {
	return o.Status != StatusProcessing && o.Expires.Before(p.cutoff())
}

// PruneAuthz reports whether a may be deleted: it expired more than
// Retention ago, whatever its status. An authorization is reused only
// while it is valid and unexpired, so one inside its reuse window is
// never deleted. An order that still names a deleted authorization reads
// as invalid (see orderStatus).
func (p PrunePolicy) PruneAuthz(a *Authz) bool {
	return a.Expires.Before(p.cutoff())
}

// PruneCert reports whether the ACME link of an issued certificate may be
// deleted: the certificate expired more than Retention ago. Until then
// download, revokeCert (either signature) and renewalInfo, which find
// the certificate by serial in this link and never read its order, keep
// working. The CA's own record of the certificate is not touched.
func (p PrunePolicy) PruneCert(c *Cert) bool {
	return c.NotAfter.Before(p.cutoff())
}

// PruneStats counts what one pass did.
type PruneStats struct {
	Orders, Authzs, Certs int // records deleted
	Scanned               int // records examined
	// Complete is false when the pass stopped at MaxDeletes or because
	// ctx ended; the next pass continues.
	Complete bool
}

// Prune runs one pruning pass now, if the store can prune and retention is
// not negative (then it returns zero stats). It logs one line with the
// counts.
func (s *Server) Prune(ctx context.Context) (PruneStats, error) {
	pr, ok := s.st.(Pruner)
	if !ok || s.cfg.Retention < 0 {
		return PruneStats{Complete: true}, nil
	}
	start := time.Now()
	st, err := pr.PruneACME(ctx, PrunePolicy{Now: s.now(), Retention: s.cfg.Retention,
		Batch: pruneBatch, MaxDeletes: pruneMaxDeletes})
	if s.opts.OnPrune != nil {
		s.opts.OnPrune(st)
	}
	args := []any{"orders", st.Orders, "authzs", st.Authzs, "certs", st.Certs,
		"scanned", st.Scanned, "complete", st.Complete, "took", time.Since(start).Round(time.Millisecond)}
	if err != nil && ctx.Err() != nil {
		s.log.Info("acme: pruning stopped", args...) // shutting down
		return st, err
	} else if err != nil {
		s.log.Error("acme: prune", append(args, "err", err)...)
		return st, err
	}
	s.log.Info("acme: pruned expired records", args...)
	return st, nil
}

// pruneLoop runs Prune shortly after start and then every PruneInterval
// until Close.
func (s *Server) pruneLoop() {
	defer s.bg.Done()
	t := time.NewTimer(pruneFirstDelay)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		s.Prune(s.ctx)
		t.Reset(s.cfg.PruneInterval)
	}
}
