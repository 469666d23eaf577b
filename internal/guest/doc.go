// Package guest builds a tiny bootable Linux guest and boots it under QEMU,
// so that coldship's end-to-end tests can prove that what they restored
// starts again, not merely that its bytes compare equal.
//
// A guest is an ext4 root filesystem (built with mkfs.ext4 -d, without
// mounting anything) holding a static busybox, a data file and an /sbin/init
// script. Booted with Debian's linux-image-amd64 kernel and initrd (direct
// kernel boot, root=/dev/vda on virtio), the init prints
//
//	COLDSHIP-BOOT-OK <token>
//	COLDSHIP-DATA-SHA256 <hex digest of /data>
//
// on the serial console and powers the machine off. CheckConsole reads
// those lines back; the token proves that this guest's init ran, the digest
// that the data file came through intact.
//
// The package is test support: coldship itself never imports it. It only
// runs tools installed by scripts/install-test-deps.sh (qemu-system-x86,
// qemu-utils, e2fsprogs, busybox-static, linux-image-amd64) and writes
// nowhere but the paths it is given.
package guest
