package acme

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// recover settles the work a previous run left: validations in flight are
// queued again, each resuming from the count of attempts its challenge
// has stored (validator.run; one whose attempts are used up becomes
// invalid with its last attempt's problem); orders that were processing become invalid with a problem
// that tells the client to order again. Failing them is deterministic and
// safe: the CA records every serial it may have signed, and the client's
// authorizations are reused so the new order is cheap. (Retrying would
// keep them processing for as long as the CA stays sealed, and a restart
// always leaves it sealed.)
func (s *Server) recover(ctx context.Context) error {
	vals, err := s.st.ListWork(ctx, WorkValidate)
	if err != nil {
		return fmt.Errorf("acme: list pending validations: %w", err)
	}
	for _, w := range vals {
		authz, typ, ok := strings.Cut(w, "/")
		if ok {
			s.val.enqueue(authz, typ, 0)
		}
	}
	fins, err := s.st.ListWork(ctx, WorkFinalize)
	if err != nil {
		return fmt.Errorf("acme: list processing orders: %w", err)
	}
	for _, id := range fins {
		o, err := s.st.GetOrder(ctx, id)
		if errors.Is(err, ErrNotFound) {
			continue
		} else if err != nil {
			return fmt.Errorf("acme: recover order: %w", err)
		}
		if o.Status == StatusProcessing {
			o.Status, o.CSR = StatusInvalid, nil
			o.Error = prob(ProbServerInternal, 500, "issuance was interrupted by a server restart; create a new order")
		}
		if err := s.st.UpdateOrder(ctx, o, WorkFinalize+o.ID, false); err != nil {
			return fmt.Errorf("acme: recover order: %w", err)
		}
	}
	return nil
}
