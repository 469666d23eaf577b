package archive

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	mathrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/coldship/coldship/cipher"
)

// pageForm returns the form of a 64 KiB block whose first page is data
// (data, then zeros) and the rest hole.
func pageForm(data []byte) []byte {
	var fb FormBuilder
	buf := make([]byte, MaxFormLen(64<<10))
	fb.Reset(buf, 64<<10)
	copy(fb.Next(0, 1), data)
	fb.Commit(0, 1)
	return fb.Form()
}

// runCases are inputs of runFrame, with whether a frame within 1/32 of
// the input is expected.
func runCases() []struct {
	name   string
	src    []byte
	within bool
} {
	counter := make([]byte, 8)
	binary.BigEndian.PutUint64(counter, 123457)
	random := make([]byte, 300<<10)
	rand.Read(random)
	tail := make([]byte, PageSize)
	copy(tail[PageSize-20:], "data at the page end")
	bitmap := bytes.Repeat([]byte{0xff}, PageSize)
	bitmap[1000], bitmap[3000] = 0x7f, 0
	long := make([]byte, 300<<10) // runs and Raw blocks over 128 KiB
	long[5] = 1
	copy(long[200<<10:], random[:130<<10])
	short := bytes.Repeat(append(bytes.Repeat([]byte{0}, minRun-1), 1), 300)
	exact := append(bytes.Repeat([]byte{'a'}, minRun), 'b')
	text := []byte(strings.Repeat("Nov 30 17:15:48 host kernel: eth0: link up\n", 100))[:PageSize]
	return []struct {
		name   string
		src    []byte
		within bool
	}{
		{"counter page", pageForm(counter), true},
		{"data at the page end", pageForm(tail), true},
		{"bitmap of 0xff", pageForm(bitmap), true},
		{"one byte", []byte{7}, false},
		{"a run of minRun", exact, false},
		{"runs of minRun-1", short, false},
		{"long runs and raw", long, false},
		{"random", random[:PageSize], false},
		{"text", pageForm(text), false},
	}
}

// TestRunFrame checks that a frame runFrame makes decompresses to its
// input with klauspost's decoder, keeps what dst held, fits its limit
// exactly (one byte less is refused), and that input it refuses leaves
// dst as it was.
func TestRunFrame(t *testing.T) {
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	prefix := []byte("prefix")
	for _, tc := range runCases() {
		t.Run(tc.name, func(t *testing.T) {
			z, ok := runFrame(append([]byte(nil), prefix...), tc.src, len(tc.src)/32)
			if ok != tc.within {
				t.Fatalf("within 1/32: %v, want %v", ok, tc.within)
			}
			if !ok && !bytes.Equal(z, prefix) {
				t.Fatalf("a refused frame left %d bytes after dst's", len(z)-len(prefix))
			}
			// Without a limit, every input gets a frame.
			z, ok = runFrame(append([]byte(nil), prefix...), tc.src, 1<<30)
			if !ok || !bytes.HasPrefix(z, prefix) {
				t.Fatal("no frame without a limit, or dst's bytes lost")
			}
			frame := z[len(prefix):]
			got, err := dec.DecodeAll(frame, nil)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !bytes.Equal(got, tc.src) {
				t.Fatalf("frame decodes to %d bytes that differ from the %d given", len(got), len(tc.src))
			}
			if _, ok := runFrame(nil, tc.src, len(frame)); !ok {
				t.Fatalf("a frame of %d bytes refused at limit %d", len(frame), len(frame))
			}
			if z, ok := runFrame(nil, tc.src, len(frame)-1); ok || len(z) != 0 {
				t.Fatalf("a frame of %d bytes made at limit %d", len(frame), len(frame)-1)
			}
		})
	}
}

// simpleRunFrame is runFrame written the plain way, a byte at a time,
// to check runFrame's word-at-a-time search and its early refusal
// against: the same frame, refused exactly when it is over the limit.
func simpleRunFrame(src []byte, limit int) ([]byte, bool) {
	if len(src) == 0 {
		return nil, false
	}
	dst := appendFrameHeader(nil, uint64(len(src)))
	last, lit := -1, 0
	for i := 0; i < len(src); {
		j := i + 1
		for j < len(src) && src[j] == src[i] {
			j++
		}
		if j-i >= minRun {
			dst, last = appendBlocks(dst, last, zstdRawBlock, src[lit:i], 0, i-lit)
			dst, last = appendBlocks(dst, last, zstdRLEBlock, nil, src[i], j-i)
			lit = j
		}
		i = j
	}
	dst, last = appendBlocks(dst, last, zstdRawBlock, src[lit:], 0, len(src)-lit)
	dst[last] |= 1
	return dst, len(dst) <= limit
}

// TestRunFrameSimple checks runFrame against simpleRunFrame at limits
// around the frame's length, on the cases and on inputs made of runs of
// every length around minRun and the 8-byte words, at every alignment.
func TestRunFrameSimple(t *testing.T) {
	srcs := [][]byte{}
	for _, tc := range runCases() {
		srcs = append(srcs, tc.src)
	}
	r := mathrand.New(mathrand.NewPCG(1, 2))
	for range 2000 {
		var src []byte
		for n := r.IntN(12); n >= 0; n-- {
			src = append(src, bytes.Repeat([]byte{byte(r.IntN(3))}, 1+r.IntN(40))...)
		}
		srcs = append(srcs, src)
	}
	for k, src := range srcs {
		want, _ := simpleRunFrame(src, 1<<30)
		for _, limit := range []int{0, len(src) / 32, len(want) - 1, len(want), len(want) + 1, 1 << 30} {
			got, ok := runFrame(nil, src, limit)
			if ok != (len(want) <= limit) || ok && !bytes.Equal(got, want) {
				t.Fatalf("input %d, limit %d: ok %v, %d bytes; the simple way: %d bytes", k, limit, ok, len(got), len(want))
			}
		}
	}
}

// TestRunFrameReferenceDecoder decodes runFrame's frames with the zstd
// command, the reference implementation: the frames are plain RFC 8878,
// not something only klauspost's decoder happens to accept.
func TestRunFrameReferenceDecoder(t *testing.T) {
	zstdCmd, err := exec.LookPath("zstd")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("zstd is not installed (make test installs it)")
		}
		t.Skip("zstd is not installed; run make test-deps")
	}
	dir := t.TempDir()
	for i, tc := range runCases() {
		z, _ := runFrame(nil, tc.src, 1<<30)
		in := filepath.Join(dir, "frame.zst")
		if err := os.WriteFile(in, z, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(zstdCmd, "-q", "-d", "-c", in).Output()
		if err != nil {
			t.Fatalf("case %d (%s): zstd -d: %v", i, tc.name, err)
		}
		if !bytes.Equal(out, tc.src) {
			t.Fatalf("case %d (%s): zstd -d gives %d bytes that differ from the %d given", i, tc.name, len(out), len(tc.src))
		}
	}
}

// TestCodecRunFrame checks that a form of runs is sealed with a frame of
// runs that opens to the form, that RecordLen predicts its record, and
// that forms without long runs still go to zstd's encoder.
func TestCodecRunFrame(t *testing.T) {
	key, err := cipher.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCodec(key, "20261130T000000Z-00000000", FormatV3, true, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 64 << 10
	for _, tc := range runCases() {
		if _, err := CheckForm(tc.src, n); err != nil {
			continue // not a form
		}
		t.Run(tc.name, func(t *testing.T) {
			form := tc.src
			scratch := make([]byte, len(form)+len(form)/8+1024)
			rec, z, err := c.SealForm(nil, scratch, form, 1, 7)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := runFrame(nil, form, len(form)/32)
			if tc.within && (!z || int64(len(rec)) != cipher.SealedSize(int64(len(want)))) {
				t.Fatalf("record of %d bytes (compressed %v), want the %d-byte frame of runs sealed", len(rec), z, len(want))
			}
			if !tc.within && z && int64(len(rec)) == cipher.SealedSize(int64(len(want))) {
				t.Fatal("a form without long runs sealed as a frame of runs")
			}
			if l, lz := c.RecordLen(scratch, form); l != int64(len(rec)) || lz != z {
				t.Fatalf("RecordLen %d, %v; the record has %d bytes, compressed %v", l, lz, len(rec), z)
			}
			got, _, err := c.OpenForm(make([]byte, MaxFormLen(n)), scratch, rec, 1, 7, z, n, FormDigest(form, n))
			if err != nil || !bytes.Equal(got, form) {
				t.Fatalf("OpenForm: %v", err)
			}
		})
	}
}

// FuzzRunFrame: whatever the input and limit, runFrame makes the frame
// the simple way makes, refuses it exactly when it is over the limit, and
// the frame decompresses to the input.
func FuzzRunFrame(f *testing.F) {
	for _, tc := range runCases() {
		f.Add(tc.src, uint16(len(tc.src)/32))
	}
	dec, err := zstd.NewReader(nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, src []byte, limit uint16) {
		z, ok := runFrame(nil, src, int(limit))
		want, wantOK := simpleRunFrame(src, int(limit))
		if ok != wantOK || ok && !bytes.Equal(z, want) {
			t.Fatalf("ok %v, %d bytes; the simple way: ok %v, %d bytes", ok, len(z), wantOK, len(want))
		}
		if !ok {
			return
		}
		if len(z) > int(limit) {
			t.Fatalf("frame of %d bytes over limit %d", len(z), limit)
		}
		got, err := dec.DecodeAll(z, nil)
		if err != nil || !bytes.Equal(got, src) {
			t.Fatalf("frame does not decode to its input: %v", err)
		}
	})
}

// TestReadRunFrame checks that readRunFrame gives back what runFrame
// put in, and leaves to the full decoder what is not a frame of runs
// within its limit: frames cut short or extended, content over the limit
// or over dst's capacity, zstd's own frames.
func TestReadRunFrame(t *testing.T) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	for _, tc := range runCases() {
		t.Run(tc.name, func(t *testing.T) {
			z, _ := runFrame(nil, tc.src, 1<<30)
			n := len(tc.src)
			got, ok := readRunFrame(make([]byte, 3, 3+n), z, n)
			if !ok || !bytes.Equal(got[3:], tc.src) {
				t.Fatalf("frame of runs not read back (ok %v)", ok)
			}
			refused := map[string]struct {
				frame      []byte
				limit, cap int
			}{
				"over the limit":      {z, n - 1, n},
				"over dst's capacity": {z, n, n - 1},
				"cut short":           {z[:len(z)-1], n, n},
				"trailing byte":       {append(z[:len(z):len(z)], 0), n, n},
			}
			for what, r := range refused {
				if _, ok := readRunFrame(make([]byte, 0, r.cap), r.frame, r.limit); ok {
					t.Errorf("%s: read", what)
				}
			}
			// zstd's frames (with a checksum, compressed blocks) go to the
			// decoder.
			if _, ok := readRunFrame(make([]byte, 0, n), enc.EncodeAll(tc.src, nil), n); ok {
				t.Error("zstd's own frame read")
			}
		})
	}
}

// FuzzReadRunFrame: whatever readRunFrame reads, klauspost's decoder
// reads the same (it refuses nothing the decoder would refuse, and reads
// nothing differently).
func FuzzReadRunFrame(f *testing.F) {
	for _, tc := range runCases() {
		z, _ := runFrame(nil, tc.src, 1<<30)
		f.Add(z)
	}
	dec, err := zstd.NewReader(nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, z []byte) {
		got, ok := readRunFrame(make([]byte, 0, 1<<20), z, 1<<20)
		if !ok {
			return
		}
		want, err := dec.DecodeAll(z, nil)
		if err != nil {
			t.Fatalf("read a frame the decoder refuses: %v", err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("read %d bytes, the decoder %d that differ", len(got), len(want))
		}
	})
}
