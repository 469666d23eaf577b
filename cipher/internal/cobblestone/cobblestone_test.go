package cobblestone

import (
	"bytes"
	"compress/zlib"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"testing/iotest"
)

// The Wycheproof vectors, copied into the repository with their licence
// and origin (testdata/README.md): tests read only this copy.
var vectorsFile = filepath.Join("testdata", "c2sp_chunked_encryption_aes_256_gcm_test.json")

// vectorsSHA256 pins the copy: a changed or truncated file fails loudly.
const vectorsSHA256 = "0f8e35568d59649fb55fb0e5602dc678dc8910d6822beef4945aee0b5994ef05"

const wantVectors = 35

type vector struct {
	ID        int
	Comment   string
	Key       []byte
	Ctx       []byte
	CT        []byte
	AEADKey   []byte
	BaseNonce []byte
	MsgLength int
	MsgSHA512 []byte
	Valid     bool
	Flags     []string
}

func (v *vector) has(flag string) bool { return slices.Contains(v.Flags, flag) }

func loadVectors(t testing.TB) []*vector {
	t.Helper()
	data, err := os.ReadFile(vectorsFile)
	if err != nil {
		t.Fatalf("test vectors are required: %v", err)
	}
	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != vectorsSHA256 {
		t.Fatalf("%s: SHA-256 %x, want %s (the copy in testdata was changed)", vectorsFile, sum, vectorsSHA256)
	}
	var file struct {
		Algorithm     string
		NumberOfTests int
		TestGroups    []struct {
			AEAD  string
			SHA   string
			Tests []struct {
				TcID      int
				Comment   string
				Key       string
				Ctx       string
				CT        string
				AEADKey   string
				BaseNonce string
				MsgLength int
				MsgSHA512 string
				Result    string
				Flags     []string
			}
		}
	}
	if err := json.Unmarshal(data, &file); err != nil {
		t.Fatalf("parse %s: %v", vectorsFile, err)
	}
	if file.Algorithm != "Cobblestone-256" {
		t.Fatalf("algorithm = %q, want Cobblestone-256", file.Algorithm)
	}
	unhex := func(id int, s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatalf("tc %d: %v", id, err)
		}
		return b
	}
	var vs []*vector
	for _, g := range file.TestGroups {
		if g.AEAD != aeadName || g.SHA != "SHA-512" {
			t.Fatalf("unexpected group aead=%q sha=%q", g.AEAD, g.SHA)
		}
		for _, tc := range g.Tests {
			zr, err := zlib.NewReader(bytes.NewReader(unhex(tc.TcID, tc.CT)))
			if err != nil {
				t.Fatalf("tc %d: ct: %v", tc.TcID, err)
			}
			ct, err := io.ReadAll(zr)
			if err != nil {
				t.Fatalf("tc %d: ct: %v", tc.TcID, err)
			}
			if tc.Result != "valid" && tc.Result != "invalid" {
				t.Fatalf("tc %d: result %q", tc.TcID, tc.Result)
			}
			vs = append(vs, &vector{
				ID:        tc.TcID,
				Comment:   tc.Comment,
				Key:       unhex(tc.TcID, tc.Key),
				Ctx:       unhex(tc.TcID, tc.Ctx),
				CT:        ct,
				AEADKey:   unhex(tc.TcID, tc.AEADKey),
				BaseNonce: unhex(tc.TcID, tc.BaseNonce),
				MsgLength: tc.MsgLength,
				MsgSHA512: unhex(tc.TcID, tc.MsgSHA512),
				Valid:     tc.Result == "valid",
				Flags:     tc.Flags,
			})
		}
	}
	if len(vs) != wantVectors || file.NumberOfTests != wantVectors {
		t.Fatalf("loaded %d vectors (file says %d), want %d", len(vs), file.NumberOfTests, wantVectors)
	}
	return vs
}

// checkMessage checks that msg is the message (or valid prefix) a vector
// describes.
func checkMessage(t *testing.T, v *vector, msg []byte) {
	t.Helper()
	if len(msg) != v.MsgLength {
		t.Fatalf("got %d plaintext bytes, want %d", len(msg), v.MsgLength)
	}
	if len(v.MsgSHA512) == 0 && len(msg) == 0 {
		return
	}
	if h := sha512.Sum512(msg); !bytes.Equal(h[:], v.MsgSHA512) {
		t.Fatalf("plaintext SHA-512 = %x, want %x", h, v.MsgSHA512)
	}
}

func TestVectors(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(fmt.Sprintf("tc%d", v.ID), func(t *testing.T) {
			t.Logf("%s %v", v.Comment, v.Flags)
			if v.has("InvalidKeySize") {
				testInvalidKeySize(t, v)
				return
			}
			t.Run("Open", func(t *testing.T) { testVectorOpen(t, v) })
			t.Run("Reader", func(t *testing.T) { testVectorReader(t, v) })
			t.Run("ReaderAt", func(t *testing.T) { testVectorReaderAt(t, v) })
			if !v.has("HeaderFailure") {
				t.Run("Raw", func(t *testing.T) { testVectorRaw(t, v) })
			}
			if v.Valid {
				t.Run("SealWithSalt", func(t *testing.T) {
					msg, err := Open(nil, v.Key, v.Ctx, v.CT)
					if err != nil {
						t.Fatal(err)
					}
					ct, err := SealWithSalt(nil, v.Key, v.CT[:SaltSize], v.Ctx, msg)
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(ct, v.CT) {
						t.Fatal("SealWithSalt did not reproduce the vector ciphertext")
					}
				})
			}
		})
	}
}

func testInvalidKeySize(t *testing.T, v *vector) {
	if v.Valid || len(v.Key) == KeySize {
		t.Fatal("InvalidKeySize vector with a valid key size")
	}
	if out, err := Open(nil, v.Key, v.Ctx, v.CT); err != ErrKeySize || out != nil {
		t.Errorf("Open: %v, want ErrKeySize", err)
	}
	if _, err := NewReader(v.Key, v.Ctx, bytes.NewReader(v.CT)); err != ErrKeySize {
		t.Errorf("NewReader: %v, want ErrKeySize", err)
	}
	if _, err := NewReaderAt(v.Key, v.Ctx, bytes.NewReader(v.CT), int64(len(v.CT))); err != ErrKeySize {
		t.Errorf("NewReaderAt: %v, want ErrKeySize", err)
	}
	if _, err := Seal(nil, v.Key, v.Ctx, []byte("x")); err != ErrKeySize {
		t.Errorf("Seal: %v, want ErrKeySize", err)
	}
	if _, err := NewWriter(v.Key, v.Ctx, io.Discard); err != ErrKeySize {
		t.Errorf("NewWriter: %v, want ErrKeySize", err)
	}
}

func testVectorOpen(t *testing.T, v *vector) {
	msg, err := Open(nil, v.Key, v.Ctx, v.CT)
	if !v.Valid {
		if err != ErrAuth || msg != nil {
			t.Fatalf("Open = %d bytes, %v; want nil, ErrAuth", len(msg), err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	checkMessage(t, v, msg)

	// Again, appending to a prefix and in place.
	prefix := []byte("prefix")
	out, err := Open(prefix, v.Key, v.Ctx, v.CT)
	if err != nil || !bytes.HasPrefix(out, prefix) {
		t.Fatalf("Open with prefix: %v", err)
	}
	checkMessage(t, v, out[len(prefix):])
	ct := bytes.Clone(v.CT)
	out, err = Open(ct[:0], v.Key, v.Ctx, ct)
	if err != nil {
		t.Fatalf("Open in place: %v", err)
	}
	checkMessage(t, v, out)
}

// readAll reads r to the end with reads of bufSize bytes and returns what it
// got and the error that ended it (nil for io.EOF). It also checks that the
// ending is sticky.
func readAll(t *testing.T, r io.Reader, bufSize int) ([]byte, error) {
	t.Helper()
	var out []byte
	buf := make([]byte, bufSize)
	var err error
	for err == nil {
		var n int
		n, err = r.Read(buf)
		if n < 0 || n > len(buf) {
			t.Fatalf("Read returned n = %d", n)
		}
		out = append(out, buf[:n]...)
	}
	for range 3 {
		for _, size := range []int{0, 1, bufSize} {
			if n, err2 := r.Read(make([]byte, size)); n != 0 || err2 != err {
				t.Fatalf("Read after %v = %d, %v; the ending must be sticky", err, n, err2)
			}
		}
	}
	if err == io.EOF {
		err = nil
	}
	return out, err
}

var readSizes = []int{1, 7, 1000, ChunkSize - 1, ChunkSize, ChunkSize + 1, 3*ChunkSize + 5}

func testVectorReader(t *testing.T, v *vector) {
	sources := map[string]func(io.Reader) io.Reader{
		"plain":    func(r io.Reader) io.Reader { return r },
		"onebyte":  iotest.OneByteReader,
		"half":     iotest.HalfReader,
		"dataerr":  iotest.DataErrReader,
		"readonly": func(r io.Reader) io.Reader { return struct{ io.Reader }{r} },
	}
	for name, wrap := range sources {
		for _, size := range readSizes {
			if name != "plain" && size != 1000 && size != ChunkSize+1 {
				continue
			}
			r, err := NewReader(v.Key, v.Ctx, wrap(bytes.NewReader(v.CT)))
			if err != nil {
				if v.Valid {
					t.Fatalf("%s/%d: NewReader: %v", name, size, err)
				}
				if err != ErrAuth {
					t.Fatalf("%s/%d: NewReader: %v, want ErrAuth", name, size, err)
				}
				if v.MsgLength != 0 {
					t.Fatalf("%s/%d: header rejected but vector has a valid prefix", name, size)
				}
				continue
			}
			out, err := readAll(t, r, size)
			if v.Valid {
				if err != nil {
					t.Fatalf("%s/%d: %v", name, size, err)
				}
			} else if err != ErrAuth {
				t.Fatalf("%s/%d: read error %v, want ErrAuth", name, size, err)
			}
			// For invalid vectors MsgLength is the valid prefix (0 if absent),
			// which a chunk-at-a-time reader releases exactly.
			checkMessage(t, v, out)
		}
	}
}

func testVectorReaderAt(t *testing.T, v *vector) {
	ra, err := NewReaderAt(v.Key, v.Ctx, bytes.NewReader(v.CT), int64(len(v.CT)))
	if err != nil {
		if v.Valid || err != ErrAuth {
			t.Fatalf("NewReaderAt: %v", err)
		}
		return
	}
	if !v.Valid && v.has("HeaderFailure") {
		t.Fatal("NewReaderAt accepted a header that must fail")
	}

	buf := make([]byte, ra.Size()+1)
	n, err := ra.ReadAt(buf, 0)
	if v.Valid {
		if err != io.EOF || int64(n) != ra.Size() {
			t.Fatalf("ReadAt whole = %d, %v; want %d, io.EOF", n, err, ra.Size())
		}
		checkMessage(t, v, buf[:n])
		if err := ra.AuthenticateLength(); err != nil {
			t.Fatalf("AuthenticateLength: %v", err)
		}
	} else if err != ErrAuth {
		t.Fatalf("ReadAt whole = %d, %v; want ErrAuth", n, err)
	}

	// A fresh ReaderAt, so nothing is cached from the read above.
	ra, err = NewReaderAt(v.Key, v.Ctx, bytes.NewReader(v.CT), int64(len(v.CT)))
	if err != nil {
		t.Fatal(err)
	}
	err = ra.AuthenticateLength()
	switch {
	case v.Valid && err != nil:
		t.Fatalf("AuthenticateLength: %v", err)
	case !v.Valid && !v.has("ValidFinalChunk") && err != ErrAuth:
		t.Fatalf("AuthenticateLength: %v, want ErrAuth", err)
	}
	if v.Valid {
		// Size is authenticated now, so reads from the end work.
		if n, err := ra.ReadAt(make([]byte, 1), ra.Size()); n != 0 || err != io.EOF {
			t.Fatalf("ReadAt(Size()) = %d, %v; want 0, io.EOF", n, err)
		}
	}
}

func testVectorRaw(t *testing.T, v *vector) {
	r := newRaw(v.AEADKey, v.BaseNonce)
	body := v.CT[HeaderSize:]
	n, ok := rawOpenedSize(int64(len(body)))
	if !ok {
		if v.Valid {
			t.Fatal("valid vector has an invalid length")
		}
		return
	}
	msg := make([]byte, n)
	err := r.open(msg, body)
	if !v.Valid {
		if err != ErrAuth {
			t.Fatalf("raw open: %v, want ErrAuth", err)
		}
		if !bytes.Equal(msg, make([]byte, n)) {
			t.Fatal("raw open left plaintext behind after failing")
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	checkMessage(t, v, msg)

	ct := make([]byte, rawSealedSize(int64(len(msg))))
	r.seal(ct, msg)
	if !bytes.Equal(ct, body) {
		t.Fatal("raw re-encryption does not match the vector")
	}
}

// boundaryLengths are the message lengths around the chunk size.
var boundaryLengths = []int{0, 1, ChunkSize - 1, ChunkSize, ChunkSize + 1, 2*ChunkSize + 7}

func testKey() []byte { return bytes.Repeat([]byte{0x42}, KeySize) }

func message(n int) []byte {
	msg := make([]byte, n)
	for i := range msg {
		msg[i] = byte(i*7 + i>>8)
	}
	return msg
}

func TestSealOpen(t *testing.T) {
	key, ctx := testKey(), []byte("context")
	for _, n := range boundaryLengths {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			msg := message(n)
			ct, err := Seal(nil, key, ctx, msg)
			if err != nil {
				t.Fatal(err)
			}
			if int64(len(ct)) != SealedSize(int64(n)) {
				t.Fatalf("len = %d, SealedSize = %d", len(ct), SealedSize(int64(n)))
			}
			pt, err := Open(nil, key, ctx, ct)
			if err != nil || !bytes.Equal(pt, msg) {
				t.Fatalf("Open: %v", err)
			}
			if _, err := Open(nil, key, []byte("other"), ct); err != ErrAuth {
				t.Fatalf("Open with wrong context: %v", err)
			}

			// Appending reuses capacity and keeps the prefix.
			dst := make([]byte, 3, 3+len(ct))
			out, err := Seal(dst, key, ctx, msg)
			if err != nil || &out[0] != &dst[0] || len(out) != 3+len(ct) {
				t.Fatalf("Seal did not append in place: %v", err)
			}
			// Open into the same array, just before the ciphertext.
			pt, err = Open(dst[:1], key, ctx, out[3:])
			if err != nil || !bytes.Equal(pt[1:], msg) {
				t.Fatalf("Open after append: %v", err)
			}

			// In place both ways, as with crypto/cipher.AEAD.
			buf := make([]byte, n, SealedSize(int64(n)))
			copy(buf, msg)
			ct2, err := Seal(buf[:0], key, ctx, buf)
			if err != nil || &ct2[0] != &buf[:1][0] {
				t.Fatalf("Seal in place: %v", err)
			}
			pt, err = Open(ct2[:0], key, ctx, ct2)
			if err != nil || !bytes.Equal(pt, msg) {
				t.Fatalf("Open in place: %v", err)
			}

			// Every truncation, extension and (sampled) bit flip fails.
			for _, cut := range truncations(len(ct)) {
				if out, err := Open(nil, key, ctx, ct[:cut]); err != ErrAuth || out != nil {
					t.Fatalf("Open of %d/%d bytes: %v", cut, len(ct), err)
				}
			}
			for _, extra := range [][]byte{{0}, make([]byte, TagSize), make([]byte, encChunkSize)} {
				if _, err := Open(nil, key, ctx, append(slices.Clip(ct), extra...)); err != ErrAuth {
					t.Fatalf("Open with %d trailing bytes: %v", len(extra), err)
				}
			}
			for i := 0; i < len(ct); i += 1 + len(ct)/97 {
				bad := bytes.Clone(ct)
				bad[i] ^= 0x10
				out := make([]byte, 0, len(ct))
				if got, err := Open(out, key, ctx, bad); err != ErrAuth || got != nil {
					t.Fatalf("Open with byte %d flipped: %v", i, err)
				}
				if !bytes.Equal(out[:cap(out)], make([]byte, cap(out))) {
					t.Fatalf("failed Open left plaintext in dst")
				}
			}
		})
	}
}

// truncations returns interesting shorter lengths of an n-byte ciphertext.
func truncations(n int) []int {
	cuts := []int{0, 1, SaltSize, HeaderSize - 1, HeaderSize, HeaderSize + TagSize - 1, n - 1}
	for k := HeaderSize; k < n; k += encChunkSize {
		cuts = append(cuts, k, k+TagSize, k+encChunkSize-1)
	}
	return slices.DeleteFunc(cuts, func(c int) bool { return c < 0 || c >= n })
}

func TestBadOverlapPanics(t *testing.T) {
	key := testKey()
	buf := make([]byte, 4*ChunkSize)
	mustPanic(t, "Seal", func() { Seal(buf[:0], key, nil, buf[HeaderSize+17:HeaderSize+17+ChunkSize+1]) })
	ct, _ := Seal(nil, key, nil, message(2*ChunkSize))
	copy(buf, ct)
	mustPanic(t, "Open", func() { Open(buf[HeaderSize+1:HeaderSize+1], key, nil, buf[:len(ct)]) })
}

func mustPanic(t *testing.T, name string, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Errorf("%s did not panic", name)
		}
	}()
	f()
}

type writeSizes []int

// writeAll writes msg to w in pieces of the given sizes, cycling.
func (s writeSizes) writeAll(t *testing.T, w io.Writer, msg []byte) {
	t.Helper()
	for i := 0; len(msg) > 0; i++ {
		n := min(s[i%len(s)], len(msg))
		if m, err := w.Write(msg[:n]); err != nil || m != n {
			t.Fatalf("Write = %d, %v", m, err)
		}
		msg = msg[n:]
	}
}

func TestWriterReader(t *testing.T) {
	key, ctx := testKey(), []byte("stream")
	writes := map[string]writeSizes{
		"whole":  {1 << 30},
		"odd":    {1, 7, ChunkSize - 1, 3, ChunkSize + 1, 2*ChunkSize + 5},
		"chunks": {ChunkSize},
		"bytes":  {1},
	}
	readers := map[string]func(io.Reader) io.Reader{
		"plain":   func(r io.Reader) io.Reader { return r },
		"onebyte": iotest.OneByteReader,
		"half":    iotest.HalfReader,
		"dataerr": iotest.DataErrReader,
	}
	for _, n := range boundaryLengths {
		msg := message(n)
		for wname, ws := range writes {
			var ct bytes.Buffer
			w, err := NewWriter(key, ctx, &ct)
			if err != nil {
				t.Fatal(err)
			}
			ws.writeAll(t, w, msg)
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			if _, err := w.Write([]byte("x")); err == nil {
				t.Fatal("Write after Close succeeded")
			}
			if int64(ct.Len()) != SealedSize(int64(n)) {
				t.Fatalf("%d/%s: wrote %d bytes, want %d", n, wname, ct.Len(), SealedSize(int64(n)))
			}
			if pt, err := Open(nil, key, ctx, ct.Bytes()); err != nil || !bytes.Equal(pt, msg) {
				t.Fatalf("%d/%s: Open of Writer output: %v", n, wname, err)
			}
			for rname, wrap := range readers {
				for _, size := range []int{1, 4096, ChunkSize + 3} {
					r, err := NewReader(key, ctx, wrap(bytes.NewReader(ct.Bytes())))
					if err != nil {
						t.Fatal(err)
					}
					pt, err := readAll(t, r, size)
					if err != nil || !bytes.Equal(pt, msg) {
						t.Fatalf("%d/%s/%s/%d: %v", n, wname, rname, size, err)
					}
				}
			}
			// iotest.TestReader exercises the io.Reader contract itself.
			r, _ := NewReader(key, ctx, bytes.NewReader(ct.Bytes()))
			if err := iotest.TestReader(r, msg); err != nil {
				t.Fatalf("%d/%s: %v", n, wname, err)
			}
			// Truncations fail, never with a clean EOF.
			for _, cut := range truncations(ct.Len()) {
				r, err := NewReader(key, ctx, bytes.NewReader(ct.Bytes()[:cut]))
				if err == nil {
					_, err = readAll(t, r, 1000)
				}
				if err != ErrAuth {
					t.Fatalf("%d/%s: truncated to %d: %v", n, wname, cut, err)
				}
			}
		}
	}
}

func TestReaderIOErrorIsSticky(t *testing.T) {
	key := testKey()
	ct, _ := Seal(nil, key, nil, message(3*ChunkSize))
	r, err := NewReader(key, nil, iotest.TimeoutReader(bytes.NewReader(ct)))
	if err != nil {
		t.Fatal(err)
	}
	out, err := readAll(t, r, 100)
	if err != iotest.ErrTimeout || len(out) != 0 {
		t.Fatalf("got %d bytes, %v; want 0, ErrTimeout", len(out), err)
	}
	if _, err := NewReader(key, nil, iotest.ErrReader(iotest.ErrTimeout)); err != iotest.ErrTimeout {
		t.Fatalf("NewReader: %v", err)
	}
}

type failWriter struct{ after int }

var errWrite = errors.New("write failed")

func (w *failWriter) Write(p []byte) (int, error) {
	if w.after <= 0 {
		return 0, errWrite
	}
	w.after--
	return len(p), nil
}

func TestWriterErrorIsSticky(t *testing.T) {
	w, err := NewWriter(testKey(), nil, &failWriter{after: 2}) // header, one chunk
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(make([]byte, ChunkSize)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(make([]byte, ChunkSize)); err != errWrite {
		t.Fatalf("Write: %v", err)
	}
	if _, err := w.Write([]byte("x")); err != errWrite {
		t.Fatalf("Write after error: %v", err)
	}
	if err := w.Close(); err != errWrite {
		t.Fatalf("Close after error: %v", err)
	}
	if _, err := NewWriter(testKey(), nil, &failWriter{}); err != errWrite {
		t.Fatalf("NewWriter: %v", err)
	}
}

func TestReaderAt(t *testing.T) {
	key, ctx := testKey(), []byte("random access")
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range append(boundaryLengths, 5*ChunkSize+100) {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			msg := message(n)
			ct, _ := Seal(nil, key, ctx, msg)
			ra, err := NewReaderAt(key, ctx, bytes.NewReader(ct), int64(len(ct)))
			if err != nil {
				t.Fatal(err)
			}
			if ra.Size() != int64(n) {
				t.Fatalf("Size = %d, want %d", ra.Size(), n)
			}
			for range 200 {
				off := rng.IntN(n + 2)
				size := rng.IntN(2*ChunkSize + 2)
				buf := make([]byte, size)
				got, err := ra.ReadAt(buf, int64(off))
				want := max(0, min(size, n-off))
				if got != want || !bytes.Equal(buf[:got], msg[min(off, n):min(off, n)+want]) {
					t.Fatalf("ReadAt(%d bytes, %d) = %d, %v; want %d", size, off, got, err, want)
				}
				if err != nil && err != io.EOF || got < size && err != io.EOF || size > 0 && got == size && err != nil {
					t.Fatalf("ReadAt(%d bytes, %d) = %d, %v", size, off, got, err)
				}
			}
			if _, err := ra.ReadAt(nil, -1); err == nil {
				t.Fatal("negative offset accepted")
			}
			if err := iotest.TestReader(io.NewSectionReader(ra, 0, ra.Size()), msg); err != nil {
				t.Fatal(err)
			}

			// Concurrent reads, for the race detector.
			var wg sync.WaitGroup
			for g := range 4 {
				wg.Go(func() {
					buf := make([]byte, 5000)
					for off := g * 1000; off < n; off += 3001 {
						k, err := ra.ReadAt(buf, int64(off))
						if (err != nil && err != io.EOF) || !bytes.Equal(buf[:k], msg[off:off+k]) {
							t.Errorf("concurrent ReadAt at %d: %v", off, err)
							return
						}
					}
				})
			}
			wg.Wait()

			for _, cut := range truncations(len(ct)) {
				if ra, err := NewReaderAt(key, ctx, bytes.NewReader(ct[:cut]), int64(cut)); err == nil {
					if err := ra.AuthenticateLength(); err != ErrAuth {
						t.Fatalf("truncated to %d: AuthenticateLength: %v", cut, err)
					}
					if _, err := ra.ReadAt(make([]byte, n+1), 0); err != ErrAuth {
						t.Fatalf("truncated to %d: ReadAt: %v", cut, err)
					}
				} else if err != ErrAuth {
					t.Fatalf("truncated to %d: NewReaderAt: %v", cut, err)
				}
			}
			// A src shorter than the size it claims is truncated too.
			if ra, err := NewReaderAt(key, ctx, bytes.NewReader(ct[:len(ct)-1]), int64(len(ct))); err == nil {
				if _, err := ra.ReadAt(make([]byte, n+1), 0); err != ErrAuth {
					t.Fatalf("short src: %v", err)
				}
			}
		})
	}
}

func TestCounterLimit(t *testing.T) {
	r := newRaw(make([]byte, KeySize), bytes.Repeat([]byte{0xff}, nonceSize))
	var n [nonceSize]byte
	got := r.chunkNonce(&n, 1<<38-1)
	want, _ := hex.DecodeString("ffffffffffffffc000000000")
	if !bytes.Equal(got, want) {
		t.Fatalf("nonce = %x, want %x", got, want)
	}
	mustPanic(t, "chunkNonce(2^38)", func() { r.chunkNonce(&n, 1<<38) })

	// A Writer can't start a full chunk it could not follow with a final one.
	w, _ := NewWriter(testKey(), nil, io.Discard)
	w.chunk = maxChunks - 1
	if _, err := w.Write(make([]byte, ChunkSize)); err != errTooLarge {
		t.Fatalf("Write at the limit: %v", err)
	}
	w, _ = NewWriter(testKey(), nil, io.Discard)
	w.chunk = maxChunks - 2
	if _, err := w.Write(make([]byte, ChunkSize+1)); err != nil {
		t.Fatalf("Write just under the limit: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close just under the limit: %v", err)
	}

	// A Reader refuses a full chunk at the last possible index.
	ct, _ := Seal(nil, testKey(), nil, make([]byte, ChunkSize))
	rd, _ := NewReader(testKey(), nil, bytes.NewReader(ct))
	rd.chunk = maxChunks - 1
	if _, err := readAll(t, rd, 100); err != ErrAuth {
		t.Fatalf("Read at the limit: %v", err)
	}

	if _, ok := rawOpenedSize(maxChunks*encChunkSize + TagSize); ok {
		t.Fatal("2^38 full chunks plus a final one accepted")
	}
	if _, ok := rawOpenedSize((maxChunks-1)*encChunkSize + TagSize); !ok {
		t.Fatal("2^38 chunks rejected")
	}
}

func TestSealAllocations(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation counts")
	}
	key, msg := testKey(), message(1<<20)
	ct := make([]byte, 0, SealedSize(int64(len(msg))))
	pt := make([]byte, 0, len(msg))
	ct, _ = Seal(ct, key, nil, msg)
	seal := testing.AllocsPerRun(10, func() { Seal(ct[:0], key, nil, msg) })
	open := testing.AllocsPerRun(10, func() { Open(pt[:0], key, nil, ct) })
	t.Logf("allocations per 1 MiB: Seal %v, Open %v", seal, open)
	// Setup only: about 64 chunks must not show up here.
	if seal > 48 || open > 48 {
		t.Fatalf("too many allocations: Seal %v, Open %v", seal, open)
	}
}

func BenchmarkSeal(b *testing.B) {
	key, msg := testKey(), message(1<<20)
	ct := make([]byte, 0, SealedSize(int64(len(msg))))
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		ct, _ = Seal(ct[:0], key, nil, msg)
	}
}

func BenchmarkOpen(b *testing.B) {
	key, msg := testKey(), message(1<<20)
	ct, _ := Seal(nil, key, nil, msg)
	pt := make([]byte, 0, len(msg))
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if pt, err = Open(pt[:0], key, nil, ct); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReader(b *testing.B) {
	key, msg := testKey(), message(1<<20)
	ct, _ := Seal(nil, key, nil, msg)
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		r, err := NewReader(key, nil, bytes.NewReader(ct))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, r, buf); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWriter(b *testing.B) {
	key, msg := testKey(), message(1<<20)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		w, err := NewWriter(key, nil, io.Discard)
		if err != nil {
			b.Fatal(err)
		}
		w.Write(msg)
		w.Close()
	}
}

// BenchmarkSealPage seals one 4 KiB page with a block-sized context: what a
// sparse image's record costs, the key derivation included.
func BenchmarkSealPage(b *testing.B) {
	k, _ := NewKey(testKey())
	msg, context := message(4096), make([]byte, 40)
	ct := make([]byte, 0, SealedSize(int64(len(msg))))
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		ct, _ = k.Seal(ct[:0], context, msg)
	}
}

// BenchmarkDerive is the key derivation of one message alone.
func BenchmarkDerive(b *testing.B) {
	k, _ := NewKey(testKey())
	salt, context := make([]byte, SaltSize), make([]byte, 40)
	var c [CommitmentSize]byte
	b.ReportAllocs()
	for b.Loop() {
		k.derive(salt, context, &c)
	}
}
