package sftp

import (
	"errors"
	"fmt"
	"io/fs"
	"path"

	sftpclient "github.com/pkg/sftp"

	"github.com/coldship/coldship/shipper"
)

// SFTP status codes beyond the few that pkg/sftp maps to fs errors. OpenSSH
// sends only codes 0-8 (draft-ietf-secsh-filexfer-02); other servers use
// the later drafts' codes.
const (
	fxFailure         = 4
	fxNoSuchPath      = 10
	fxWriteProtect    = 12
	fxNoMedia         = 13
	fxNoSpace         = 14
	fxQuotaExceeded   = 15
	fxFileIsDirectory = 24
)

// stRdonly is ST_RDONLY in statvfs's f_flag.
const stRdonly = 1

// classify wraps err with the sentinel errors callers branch on. OpenSSH's
// sftp-server reports a full disk, a read-only file system and most other
// errno values as the generic SSH_FX_FAILURE; for that code the file system
// is asked (statvfs@openssh.com) whether it is full or read-only.
func (t *Transport) classify(c *conn, op, p string, err error) error {
	var status *sftpclient.StatusError
	code := uint32(0)
	if errors.As(err, &status) {
		code = status.Code
	}
	var notDir *notDirError
	switch {
	case errors.As(err, &notDir):
		return fmt.Errorf("%s %s: %v: the destination needs a directory there (%w)", op, p, err, shipper.ErrPermanent)
	case errors.Is(err, fs.ErrNotExist), code == fxNoSuchPath:
		return fmt.Errorf("%s %s: %w (%w)", op, p, err, shipper.ErrNotFound)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%s %s: permission denied for user %s on %s (%w)", op, p, t.dest.user, t.dest.alias, shipper.ErrPermanent)
	case code == fxWriteProtect:
		return fmt.Errorf("%s %s: the destination is write-protected (%w)", op, p, shipper.ErrPermanent)
	case code == fxNoSpace:
		return fmt.Errorf("%s %s: no space left on the destination (%w)", op, p, shipper.ErrPermanent)
	case code == fxQuotaExceeded:
		return fmt.Errorf("%s %s: disk quota exceeded on the destination (%w)", op, p, shipper.ErrPermanent)
	case code == fxNoMedia:
		return fmt.Errorf("%s %s: no medium in the destination's drive (%w)", op, p, shipper.ErrPermanent)
	case code == fxFileIsDirectory:
		return fmt.Errorf("%s %s: is a directory (%w)", op, p, shipper.ErrPermanent)
	}
	if code == fxFailure && c != nil && c.statvfs {
		if why := fileSystemTrouble(c, p); why != "" {
			return fmt.Errorf("%s %s: %v; %s (%w)", op, p, err, why, shipper.ErrPermanent)
		}
	}
	if code == fxFailure && (op == "write" || op == "sync") {
		// pwrite and fsync on a regular file fail for a full disk, an
		// exceeded quota or an I/O error, none of which a retry mends;
		// OpenSSH reports them all as the same failure.
		return fmt.Errorf("%s %s: %v: the server could not store it (disk quota exceeded, or an I/O error) (%w)", op, p, err, shipper.ErrPermanent)
	}
	return fmt.Errorf("%s %s: %w", op, p, err)
}

// fileSystemTrouble says whether the file system holding p is full or
// read-only, the usual causes of an SSH_FX_FAILURE when writing.
func fileSystemTrouble(c *conn, p string) string {
	var st *sftpclient.StatVFS
	for dir := path.Dir(p); ; dir = path.Dir(dir) {
		var err error
		if st, err = c.sftp.StatVFS(dir); err == nil {
			break
		}
		if !errors.Is(err, fs.ErrNotExist) || dir == "." || dir == "/" {
			return ""
		}
	}
	switch {
	case st.Flag&stRdonly != 0:
		return "the destination file system is read-only"
	case st.Bavail*st.Frsize < 1<<20:
		return fmt.Sprintf("the destination file system is full (%d bytes available)", st.Bavail*st.Frsize)
	case st.Files > 0 && st.Favail == 0:
		return "the destination file system has no free inodes"
	}
	return ""
}
