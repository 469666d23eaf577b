package shipper

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/coldship/coldship/archive"
)

// Labels (send --name) tell apart the series of several VMs shipped to one
// destination. What a label is checked against lives here: the label asked
// for (--name), and the label of the restore a shipment would update.

// ErrOtherSeries wraps archive.ErrIntegrity too (exit status 5).
var ErrOtherSeries = errors.New("refusing to update to another series")

// CheckLabel reports an error unless the shipment whose header is h has
// the label (send --name), "" taking any: a shipment of another series
// named by its id, or put among this one's.
func CheckLabel(h *archive.Header, label string) error {
	if label != "" && h.Label != label {
		return fmt.Errorf("shipment %s is labelled %s, not %s: another series", h.ID, labelOrNone(h.Label), strconv.Quote(label))
	}
	return nil
}

// CheckSameLabel is for updating a restore in place: the restore holds
// shipment restoredID, of label restoredLabel (nil: unknown), and next,
// of label nextLabel, would replace it. A shipment of another label is
// of another series (another VM sent to the same destination, maybe
// under the same file names): it is refused. The error wraps
// ErrOtherSeries and archive.ErrIntegrity and names both shipments.
func CheckSameLabel(restoredID string, restoredLabel *string, next, nextLabel string) error {
	if restoredLabel == nil || *restoredLabel == nextLabel {
		return nil
	}
	return fmt.Errorf("%w: shipment %s is labelled %s, the restore holds %s, labelled %s (%w)",
		ErrOtherSeries, next, labelOrNone(nextLabel), restoredID, labelOrNone(*restoredLabel), archive.ErrIntegrity)
}

// labelOrNone quotes a label, or says (none).
func labelOrNone(l string) string {
	if l == "" {
		return "(none)"
	}
	return strconv.Quote(l)
}

// labelled says " labelled LABEL" for a label, nothing for none.
func labelled(label string) string {
	if label == "" {
		return ""
	}
	return " labelled " + strconv.Quote(label)
}
