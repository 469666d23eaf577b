package shipper

import (
	"fmt"
	"strings"
)

// CheckName reports whether name is a valid object name: slash-separated,
// relative, without empty, ".", ".." or dot-prefixed elements (those are
// reserved for temporaries).
func CheckName(name string) error {
	if name == "" {
		return fmt.Errorf("invalid object name %q: empty", name)
	}
	for _, el := range strings.Split(name, "/") {
		if el == "" || strings.HasPrefix(el, ".") || strings.ContainsAny(el, "\\\x00") {
			return fmt.Errorf("invalid object name %q", name)
		}
	}
	return nil
}
