package units

import "testing"

func TestIEC(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB",
		7 << 20: "7.0 MiB", 3 << 30: "3.0 GiB", 8 << 40: "8.0 TiB", 1 << 62: "4.0 EiB",
	} {
		if got := IEC(n); got != want {
			t.Errorf("IEC(%d) = %q, want %q", n, got, want)
		}
	}
}
