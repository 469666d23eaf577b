package shipper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/coldship/coldship/archive"
)

// ChainLink is where a signed shipment stands in its chain, the shipments
// signed at one source for one set of sources and one destination: the
// chain's id and the shipment signed before (with the SHA-256 of its
// statement), or none.
type ChainLink struct {
	Chain          string // archive.ValidChainID
	Previous       string // "" for the first shipment of the chain
	PreviousSHA256 archive.Digest
}

// ChainState is the source's record of one chain, kept in the state
// directory as chains/<series>.json (mode 0600, written atomically),
// <series> naming the destination, the sources' top-level names and the
// label (send --name) as the DR state does (seriesName): two VMs whose
// files have the same names keep a chain each. It holds the chain's random
// id and the last shipment signed in it with the SHA-256 of its statement:
// no key and nothing of the data.
//
// The chain id is random rather than derived from the names so that it
// tells the destination nothing about them; losing the state starts a new
// chain, which `receive --into` refuses to follow without --allow-rollback.
type ChainState struct {
	path string
	rec  chainRecord
	// restart says why the recorded chain could not be continued; "" when
	// it is continued or is new.
	restart string
}

type chainRecord struct {
	Format     int            `json:"format"`
	Dest       string         `json:"dest"`
	Chain      string         `json:"chain"`
	Last       string         `json:"last,omitempty"`
	LastSHA256 archive.Digest `json:"last_sha256"`
}

// OpenChainState reads the chain state of the series of sources sent to
// dest under label ("" for none), or starts a new chain (in memory until
// Record) if there is none or it is damaged.
//
// A labelled series without a state of its own continues the chain that
// an earlier coldship kept for its sources whatever their label (one chain
// for all the labels then): a new chain would make every `receive --into`
// of the series refuse the next shipment until given --allow-rollback.
// Its first statement then names that chain's last shipment as its
// previous, whichever series signed it; the state it records is its own.
func OpenChainState(stateDir, dest string, sources []archive.Source, label string) (*ChainState, error) {
	if stateDir == "" {
		return nil, errors.New("chain state: no state directory")
	}
	path := func(label string) string {
		return filepath.Join(stateDir, "chains", seriesName(dest, sources, label)+".json")
	}
	c := &ChainState{path: path(label)}
	fresh := chainRecord{Format: 1, Dest: dest, Chain: archive.NewChainID()}
	from := c.path
	b, err := os.ReadFile(from)
	if errors.Is(err, fs.ErrNotExist) && label != "" {
		from = path("")
		b, err = os.ReadFile(from)
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		c.rec = fresh
		return c, nil
	case err != nil:
		return nil, fmt.Errorf("chain state: %w", err)
	}
	if err := json.Unmarshal(b, &c.rec); err != nil || !c.rec.valid(dest) {
		c.rec = fresh
		c.restart = fmt.Sprintf("chain state %s is damaged", from)
	}
	return c, nil
}

func (r *chainRecord) valid(dest string) bool {
	return r.Format == 1 && r.Dest == dest && archive.ValidChainID(r.Chain) &&
		(r.Last == "") == (r.LastSHA256 == archive.Digest{}) && (r.Last == "" || archive.ValidID(r.Last))
}

// Link returns the link of shipment id, about to be signed, to the chain.
// When the previous shipment's statement is still at the destination it is
// read and compared with the recorded digest; a difference is reported
// with log (the statement says what this source signed, whatever the
// destination holds now). A previous shipment that is gone (pruned) keeps
// its recorded digest.
func (c *ChainState) Link(ctx context.Context, tr Transport, id string, log func(string, ...any)) (ChainLink, error) {
	if log == nil {
		log = func(string, ...any) {}
	}
	if c.restart != "" {
		log("%s: starting a new chain (receive --into will need --allow-rollback once)", c.restart)
	}
	link := ChainLink{Chain: c.rec.Chain, Previous: c.rec.Last, PreviousSHA256: c.rec.LastSHA256}
	if link.Previous == "" {
		return link, nil
	}
	if link.Previous == id {
		return ChainLink{}, fmt.Errorf("chain state %s: shipment %s is already signed in its chain", c.path, id)
	}
	b, err := getObject(ctx, tr, link.Previous+"/"+archive.SignedObject, archive.MaxStatement)
	switch {
	case errors.Is(err, ErrNotFound):
	case err != nil && !errors.Is(err, archive.ErrIntegrity):
		return ChainLink{}, fmt.Errorf("read the previous statement of the chain: %w", err)
	case err != nil || archive.StatementDigest(b) != link.PreviousSHA256:
		log("warning: the statement of %s at %s is not the one signed here (recorded in %s): it was changed at the destination",
			link.Previous, tr, c.path)
	}
	return link, nil
}

// Record makes shipment id, whose statement has SHA-256 sum, the last of
// the chain.
func (c *ChainState) Record(id string, sum archive.Digest) error {
	rec := c.rec
	rec.Last, rec.LastSHA256 = id, sum
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(c.path), 0o700); err != nil {
		return fmt.Errorf("save chain state: %w", err)
	}
	if err := writeFileAtomic(c.path, b); err != nil {
		return fmt.Errorf("save chain state: %w", err)
	}
	c.rec, c.restart = rec, ""
	return nil
}
