package archive

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestLiveManifestBacking: a live manifest carries owners and backing
// layers as format 3's does, and is refused when they contradict it.
func TestLiveManifestBacking(t *testing.T) {
	u, g := uint32(64055), uint32(994)
	good := func() *LiveManifest {
		return &LiveManifest{Format: LiveFormat, ID: "20261130T120000Z-0a1b2c3d", Created: time.Unix(0, 0).UTC(),
			BlockSize: MinBlockSize, Compression: "zstd", Rounds: 1, Files: []File{
				{Path: "vm", Type: TypeDir, Mode: 0o755, UID: &u, GID: &g},
				{Path: "vm/base", Type: TypeFile, Size: 10, Mode: 0o644, UID: &u, GID: &g,
					Extents: []Extent{{Kind: KindData, Length: 10}}},
				{Path: "vm/top", Type: TypeFile, Size: 10, Mode: 0o644, UID: &u, GID: &g,
					Extents: []Extent{{Kind: KindData, Length: 10}}, Backing: &Backing{Path: "vm/base", Format: "qcow2"}},
			}}
	}
	parse := func(m *LiveManifest) error {
		j, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		_, err = ParseLiveManifest(j)
		return err
	}
	if err := parse(good()); err != nil {
		t.Fatalf("a good live manifest: %v", err)
	}
	withData := good()
	withData.Files[2].Backing, withData.Files[2].DataFiles = nil, []string{"vm/base"}
	if err := parse(withData); err != nil {
		t.Fatalf("a live manifest with a data file: %v", err)
	}
	for name, tc := range map[string]struct {
		edit func(*LiveManifest)
		want string
	}{
		"backing loop":        {func(m *LiveManifest) { m.Files[1].Backing = &Backing{Path: "vm/top", Format: "qcow2"} }, "loops"},
		"backing to a dir":    {func(m *LiveManifest) { m.Files[2].Backing.Path = "vm" }, "not a file of the shipment"},
		"backing missing":     {func(m *LiveManifest) { m.Files[2].Backing.Path = "vm/gone" }, "not a file of the shipment"},
		"backing format":      {func(m *LiveManifest) { m.Files[2].Backing.Format = "nbd" }, "backing format"},
		"dir with backing":    {func(m *LiveManifest) { m.Files[0].Backing = &Backing{Path: "vm/base", Format: "raw"} }, "directory with data"},
		"owner, no group":     {func(m *LiveManifest) { m.Files[1].GID = nil }, "owner without group"},
		"data file missing":   {func(m *LiveManifest) { m.Files[2].DataFiles = []string{"vm/gone"} }, "data file \"vm/gone\" is not a file"},
		"data file itself":    {func(m *LiveManifest) { m.Files[2].DataFiles = []string{"vm/top"} }, "is not a file"},
		"data file twice":     {func(m *LiveManifest) { m.Files[2].DataFiles = []string{"vm/base", "vm/base"} }, "listed twice"},
		"dir with data files": {func(m *LiveManifest) { m.Files[0].DataFiles = []string{"vm/base"} }, "directory with data"},
		"data file's own": {func(m *LiveManifest) {
			m.Files[2].DataFiles = []string{"vm/base"}
			m.Files[1].DataFiles = []string{"vm/top"}
		}, "data files of its own"},
		"data blocks count": {func(m *LiveManifest) { m.Files[1].DataBlocks = 1 }, "block table"},
	} {
		m := good()
		tc.edit(m)
		if err := parse(m); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "live manifest") {
			t.Errorf("%s: %v, want an error saying %q", name, err, tc.want)
		}
	}
}
