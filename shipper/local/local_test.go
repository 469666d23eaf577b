package local_test

import (
	"testing"

	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/local"
	"github.com/coldship/coldship/shipper/shippertest"
)

func TestConformance(t *testing.T) {
	shippertest.Run(t, func(t *testing.T) shipper.Transport {
		tr, err := local.New(t.TempDir() + "/dest")
		if err != nil {
			t.Fatal(err)
		}
		return tr
	})
}
