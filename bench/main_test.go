package bench

import (
	"os"
	"testing"
)

// W6 runs its device in this test binary, started again (DeviceMain).
func TestMain(m *testing.M) {
	DeviceMain()
	os.Exit(m.Run())
}
