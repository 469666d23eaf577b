package childenv

import (
	"slices"
	"strings"
	"testing"
)

// TestEnviron: the passphrase variable is withheld, everything else kept.
func TestEnviron(t *testing.T) {
	t.Setenv("COLDSHIP_PASSPHRASE", "correct horse")
	t.Setenv("COLDSHIP_CHILDENV_TEST", "kept")
	env := Environ()
	for _, kv := range env {
		if strings.HasPrefix(kv, "COLDSHIP_PASSPHRASE=") {
			t.Errorf("the passphrase is passed on: %s", kv)
		}
	}
	if !slices.Contains(env, "COLDSHIP_CHILDENV_TEST=kept") {
		t.Errorf("a variable that holds no secret was dropped")
	}
	if got := Without([]string{"A=1", "B=2", "A2=3"}, "A"); !slices.Equal(got, []string{"B=2", "A2=3"}) {
		t.Errorf("Without = %v", got)
	}
}
