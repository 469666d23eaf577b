package shipper

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/zeebo/blake3"

	"github.com/coldship/coldship/archive"
)

// stateKeys are what the sender derives from its state key, a random key
// kept in its own 0600 file in the state directory (dr/state.key): the
// keyed digests of blocks (in DR tables and journals: a copy of them
// without the key does not let anyone confirm a guess of a block's
// content), and the MACs of the journal and of DR tables (a file changed
// behind the sender's back is refused). Without a state directory the key
// is random for the run.
type stateKeys struct {
	id         string    // 8 bytes, hex: which state key a table was made with
	journalMAC [32]byte  // keys the MAC chain of resume journals
	tableMAC   [32]byte  // keys the MAC of DR block tables
	recordMAC  [32]byte  // keys the tags that tie a journal's records to the records they describe
	keyed      sync.Pool // of *blake3.Hasher keyed with the state key
	tags       sync.Pool // of *blake3.Hasher keyed with recordMAC
}

// stateKeyFile is where the state key lives in a state directory.
func stateKeyFile(stateDir string) string { return filepath.Join(stateDir, "dr", "state.key") }

// loadStateKeys reads (or makes, on first use) the state key of stateDir;
// with stateDir "" the key is random for this run. A damaged key is moved
// aside and replaced, with a warning to log: an unattended run never
// needs someone to remove it (what it keyed, DR tables and resume
// journals, then no longer verifies and is set aside in turn).
func loadStateKeys(stateDir string, log func(string, ...any)) (*stateKeys, error) {
	var key [32]byte
	if stateDir == "" {
		rand.Read(key[:])
	} else {
		if err := os.MkdirAll(filepath.Dir(stateKeyFile(stateDir)), 0o700); err != nil {
			return nil, fmt.Errorf("state key: %w", err)
		}
		var err error
		key, err = loadStateKey(stateKeyFile(stateDir))
		if errors.Is(err, errStateKeyDamaged) {
			p := stateKeyFile(stateDir)
			bad := p + ".bad-" + time.Now().UTC().Format("20060102T150405Z")
			// Another run may have set it aside first: then load its new one.
			if rerr := os.Rename(p, bad); rerr == nil {
				log("warning: %v: moved aside to %s; a new state key is made (the next send with --base is a full one, "+
					"and an interrupted send starts a new shipment)", err, bad)
			} else if !errors.Is(rerr, fs.ErrNotExist) {
				return nil, fmt.Errorf("%w (moving it aside: %v)", err, rerr)
			}
			key, err = loadStateKey(p)
		}
		if err != nil {
			return nil, err
		}
	}
	k := &stateKeys{}
	var id [8]byte
	blake3.DeriveKey("coldship/v1 state key id", key[:], id[:])
	k.id = hex.EncodeToString(id[:])
	blake3.DeriveKey("coldship/v3 journal mac", key[:], k.journalMAC[:])
	blake3.DeriveKey("coldship/v3 dr table mac", key[:], k.tableMAC[:])
	blake3.DeriveKey("coldship/v4 journal record", key[:], k.recordMAC[:])
	k.keyed.New = func() any { return newKeyed(&key) }
	k.tags.New = func() any { return newKeyed(&k.recordMAC) }
	return k, nil
}

// errStateKeyDamaged marks a state key file that does not hold a key.
var errStateKeyDamaged = errors.New("damaged: not 32 bytes in hex")

// loadStateKey reads the state key, or makes one (mode 0600) on first use.
func loadStateKey(path string) ([32]byte, error) {
	var key [32]byte
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		rand.Read(key[:])
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			return loadStateKey(path) // made by a concurrent run
		}
		if err != nil {
			return key, fmt.Errorf("state key: %w", err)
		}
		_, err = fmt.Fprintf(f, "%x\n", key[:])
		if serr := f.Sync(); err == nil {
			err = serr
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
			return key, fmt.Errorf("state key: %w", err)
		}
		return key, nil
	}
	if err != nil {
		return key, fmt.Errorf("state key: %w", err)
	}
	if n, err := hex.Decode(key[:], []byte(strings.TrimSpace(string(b)))); err != nil || n != len(key) {
		return key, fmt.Errorf("state key %s: %w", path, errStateKeyDamaged)
	}
	return key, nil
}

const keyedPrefix = "coldship/v3/state-block\x00"

// keyedDigest returns the keyed digest of block index whose block digest
// (archive.FormDigest) is d: BLAKE3 keyed with the state key over
// "coldship/v3/state-block" 0x00 || u64be(index) || d. The index keeps
// equal blocks at different places from showing as equal.
func (k *stateKeys) keyedDigest(index int64, d archive.Digest) archive.Digest {
	h := k.keyed.Get().(*blake3.Hasher)
	defer k.keyed.Put(h)
	h.Reset() // keeps the key
	var buf [len(keyedPrefix) + 8 + 32]byte
	copy(buf[:], keyedPrefix)
	binary.BigEndian.PutUint64(buf[len(keyedPrefix):], uint64(index))
	copy(buf[len(keyedPrefix)+8:], d[:])
	h.Write(buf[:])
	var out archive.Digest
	h.Sum(out[:0])
	return out
}

// recordTag ties a record of a journal's 'R' body (its first
// journalRecordHead bytes: file, block, length, flags, keyed digest) to
// the head of the sealed record it describes (its random salt and key
// commitment, unique to that record): the first recordTagSize bytes of
// BLAKE3 keyed with the record key over both.
//
// It runs once per record sent, so its keyed hasher (8 KiB: making one
// cost more than the tag) comes from a pool.
func (k *stateKeys) recordTag(rec, head []byte) [recordTagSize]byte {
	h := k.tags.Get().(*blake3.Hasher)
	defer k.tags.Put(h)
	h.Reset() // keeps the key
	h.Write(rec[:journalRecordHead])
	h.Write(head)
	var m [32]byte
	h.Sum(m[:0])
	var t [recordTagSize]byte
	copy(t[:], m[:])
	return t
}

// mac returns BLAKE3 keyed with key over the parts, in order.
func mac(key *[32]byte, parts ...[]byte) [32]byte {
	h := newKeyed(key)
	for _, p := range parts {
		h.Write(p)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// newKeyed returns BLAKE3 keyed with key.
func newKeyed(key *[32]byte) *blake3.Hasher {
	h, err := blake3.NewKeyed(key[:])
	if err != nil {
		panic("shipper: internal error: " + err.Error())
	}
	return h
}
