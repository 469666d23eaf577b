package archive

import (
	"bytes"
	"crypto/rand"
	"testing"

	"github.com/coldship/coldship/cipher"
)

// looksRandom must turn away random pages (which zstd cannot shrink) and
// keep text, zeros and repeating data, which it can.
func TestLooksRandom(t *testing.T) {
	random := make([]byte, 64<<10)
	rand.Read(random)
	text := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog; "), 2000)[:64<<10]
	repeating := bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 7, 8}, 8<<10)
	cases := []struct {
		name string
		b    []byte
		want bool
	}{
		{"random 64 KiB", random, true},
		{"random 4 KiB", random[:PageSize], true},
		{"short random", random[:PageSize-1], false},
		{"zeros", make([]byte, 64<<10), false},
		{"text", text, false},
		{"repeating", repeating, false},
	}
	for _, c := range cases {
		if got := looksRandom(c.b); got != c.want {
			t.Errorf("%s: looksRandom = %v, want %v", c.name, got, c.want)
		}
	}
}

// A small block that looks random is sealed uncompressed and opens.
func TestSealRandomSmallBlock(t *testing.T) {
	key, _ := cipher.NewKey()
	c, err := NewCodec(key, "20261130T120000Z-00000002", FormatV3, true, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	plain := make([]byte, 16<<10)
	rand.Read(plain)
	rec, z, err := c.Seal(nil, make([]byte, len(plain)), plain, 1, 0)
	if err != nil || z {
		t.Fatalf("Seal: compressed=%v err=%v", z, err)
	}
	got, err := c.Open(make([]byte, 0, len(plain)), nil, rec, 1, 0, z, int64(len(plain)), BlockDigest(plain))
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("Open: %v", err)
	}
}
