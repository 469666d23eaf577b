package home

import (
	"os/user"
	"testing"
)

func TestDir(t *testing.T) {
	t.Setenv("HOME", "/h")
	if got := Dir(); got != "/h" {
		t.Errorf("Dir() with HOME=/h = %q", got)
	}
	u, err := user.Current()
	if err != nil || u.HomeDir == "" {
		t.Skipf("no home folder in the password database: %v", err)
	}
	t.Setenv("HOME", "")
	if got := Dir(); got != u.HomeDir {
		t.Errorf("Dir() without HOME = %q, want the password database's %q", got, u.HomeDir)
	}
}
