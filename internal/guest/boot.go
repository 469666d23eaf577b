package guest

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// KernelArgs is the guest kernel's command line: console on the first
// serial port, root on the first virtio disk, and on a kernel panic an
// immediate reboot, which -no-reboot turns into QEMU exiting.
const KernelArgs = "console=ttyS0 root=/dev/vda rw panic=-1 quiet"

// BootArgs returns the command line (program first) that boots disk, an
// image in format (raw, qcow2), under QEMU's TCG emulator, with the serial
// console written to the file console. QEMU exits when the guest powers off
// or its kernel panics. disk must not contain a comma (QEMU's -drive syntax);
// a hook can cd to the image's folder and pass its bare name. The guest
// gets 1 GiB: the host's initramfs is unpacked into it, and a package
// such as lvm2 installed on the host makes it several times bigger (256
// MiB ran out with a 35 MB one); TCG gives the guest only what it touches.
func (h Host) BootArgs(disk, format, console string) []string {
	return []string{
		h.QEMU, "-accel", "tcg", "-m", "1G", "-smp", "1",
		"-nodefaults", "-display", "none", "-no-reboot", "-nic", "none",
		"-serial", "file:" + console,
		"-kernel", h.Kernel, "-initrd", h.Initrd, "-append", KernelArgs,
		"-drive", "file=" + disk + ",if=virtio,format=" + format,
	}
}

// Qcow2 converts the raw image raw to the standalone qcow2 image out.
func (h Host) Qcow2(ctx context.Context, raw, out string) error {
	cmd := exec.CommandContext(ctx, h.QEMUImg, "convert", "-f", "raw", "-O", "qcow2", raw, out)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("qemu-img convert %s to %s: %v\n%s", raw, out, err, b)
	}
	return nil
}

// ShellJoin quotes args for sh, as a hook command line needs them.
func ShellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(c rune) bool {
		return !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_./=:,+@%", c))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// CheckConsole checks that a guest's serial console log shows its init ran
// (the marker with token) and read /data with the given digest. The error
// says what was missing or wrong; the caller shows the log.
func CheckConsole(log []byte, token, digest string) error {
	booted, got, other := false, "", ""
	for _, line := range strings.Split(string(log), "\n") {
		f := strings.Fields(line) // also drops the serial line's \r
		if len(f) != 2 {
			continue
		}
		switch f[0] {
		case Marker:
			if f[1] == token {
				booted = true
			} else {
				other = f[1]
			}
		case DigestLabel:
			if booted && got == "" {
				got = f[1]
			}
		}
	}
	switch {
	case !booted && other != "":
		return fmt.Errorf("another guest booted: %s %s on its console, want token %s", Marker, other, token)
	case !booted:
		return fmt.Errorf("the guest's init did not run: no line %q on its console", Marker+" "+token)
	case got == "":
		return fmt.Errorf("the guest booted but printed no %s line after its marker", DigestLabel)
	case got != digest:
		return fmt.Errorf("the guest's /data has SHA-256 %s, want %s", got, digest)
	}
	return nil
}
