package hooks

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

func TestStamp(t *testing.T) {
	tests := []struct {
		name   string
		change func(t *testing.T, f *os.File, s *Stamp)
		what   string // "" for unchanged
	}{
		{"unchanged", func(t *testing.T, f *os.File, s *Stamp) {
			buf := make([]byte, 10)
			f.ReadAt(buf, 0)
		}, ""},
		{"written in place", func(t *testing.T, f *os.File, s *Stamp) {
			// The file's mtime is an hour old, so any write moves it.
			if _, err := f.WriteAt([]byte("x"), 100); err != nil {
				t.Fatal(err)
			}
		}, "modified at"},
		{"grown", func(t *testing.T, f *os.File, s *Stamp) {
			if err := f.Truncate(8192); err != nil {
				t.Fatal(err)
			}
		}, "size 4096, now 8192"},
		{"status changed", func(t *testing.T, f *os.File, s *Stamp) {
			// A writer that puts mtime back still moves ctime; timestamps
			// may be coarser than the test is fast, so move the stamp.
			s.CTime.Nsec ^= 1
		}, "status changed at"},
		{"another file", func(t *testing.T, f *os.File, s *Stamp) {
			s.Ino++
		}, "replaced by another file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := newImage(t)
			if err := os.Truncate(path, 4096); err != nil {
				t.Fatal(err)
			}
			old := time.Now().Add(-time.Hour)
			if err := os.Chtimes(path, old, old); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			s, err := StampOf(f)
			if err != nil {
				t.Fatal(err)
			}
			if s.Size != 4096 || s.Ino == 0 || s.MTime.Sec != old.Unix() {
				t.Fatalf("stamp %+v", s)
			}
			tt.change(t, f, &s)
			err = s.Verify(f)
			if tt.what == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrChanged) || !strings.Contains(err.Error(), tt.what) || !strings.Contains(err.Error(), path) {
				t.Fatalf("Verify: %v, want ErrChanged saying %q", err, tt.what)
			}
		})
	}
}
