package blocks

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
)

// BenchmarkSparseBlocks measures the cost per block of reading, hashing
// and sealing a sparse image: 4 KiB of data at the start of every 64 KiB
// block (the shape of a thin disk after years of scattered writes), with
// compression on. The target is at most 15 µs per block.
func BenchmarkSparseBlocks(b *testing.B) {
	const n = 16384 // 1 GiB apparent
	p := filepath.Join(b.TempDir(), "sparse")
	regions := make([]region, n)
	for i := range regions {
		regions[i] = region{int64(i) * bs, random(4096)}
	}
	makeFile(b, p, n*bs, regions...)
	files := openFiles(b, p)
	files[0].F.Sync() // delayed allocation makes SEEK_DATA slow until written back
	key, _ := cipher.NewKey()
	codec, err := archive.NewCodec(key, "20261121T233000Z-3f9a1c2e", archive.FormatV3, true, 2)
	if err != nil {
		b.Fatal(err)
	}
	defer codec.Close()
	opts := Options[struct{}]{BlockSize: bs, Jobs: 2,
		Sealer: func(b *Block[struct{}], dst, scratch []byte) ([]byte, bool, error) {
			return codec.SealForm(dst, scratch, b.Form, uint32(b.File), uint64(b.Index))
		}}
	b.ResetTimer()
	for b.Loop() {
		err := Read(context.Background(), files, opts, func(bt *Batch[struct{}]) error { bt.Release(); return nil })
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/block")
}
