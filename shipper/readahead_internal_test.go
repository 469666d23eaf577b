package shipper

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
)

// headTransport serves one object from memory and records the ranges
// opened.
type headTransport struct {
	Transport
	data  []byte
	mu    sync.Mutex
	opens []string
}

func (h *headTransport) Open(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	h.mu.Lock()
	h.opens = append(h.opens, fmt.Sprintf("%d+%d", offset, length))
	h.mu.Unlock()
	end := int64(len(h.data))
	if length >= 0 {
		end = min(end, offset+length)
	}
	return io.NopCloser(bytes.NewReader(h.data[offset:end])), nil
}

// TestTableReadAhead checks the block table's reader built on what was
// read ahead: the whole table when it fits, the rest read from where the
// head ends otherwise (even when nothing is left: a table exactly the
// head's size must still show whether it is longer), and the read-ahead
// used once.
func TestTableReadAhead(t *testing.T) {
	ctx := context.Background()
	for _, n := range []int{0, 5000, tableHead - 1, tableHead, tableHead + 1, 3*tableHead + 7} {
		data := make([]byte, n)
		rand.Read(data)
		tr := &headTransport{data: data}
		var ra readAhead
		ra.start(ctx, tr, "20261130T000000Z-00000000")
		rc, ok := ra.tableReader(ctx, tr, "x/blocks")
		if !ok {
			t.Fatalf("%d bytes: nothing read ahead", n)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%d bytes: read %d (%v)", n, len(got), err)
		}
		want := []string{fmt.Sprintf("0+%d", tableHead)}
		if n >= tableHead {
			want = append(want, fmt.Sprintf("%d+-1", tableHead))
		}
		tr.mu.Lock()
		var tableOpens []string
		for _, o := range tr.opens {
			if o != fmt.Sprintf("0+%d", -1) { // the key's read ahead
				tableOpens = append(tableOpens, o)
			}
		}
		tr.mu.Unlock()
		if strings.Join(tableOpens, " ") != strings.Join(want, " ") {
			t.Errorf("%d bytes: opened %v, want %v", n, tableOpens, want)
		}
		if _, ok := ra.tableReader(ctx, tr, "x/blocks"); ok {
			t.Errorf("%d bytes: the read-ahead was used twice", n)
		}
	}
}
