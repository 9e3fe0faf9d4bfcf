package transport

import (
	"strings"
	"testing"
)

func TestValidateRecordID(t *testing.T) {
	for _, id := range []string{"a", "product-42", "ünïcødé 名前", "with space", strings.Repeat("x", MaxRecordID), "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"} {
		if err := ValidateRecordID(id); err != nil {
			t.Errorf("ValidateRecordID(%q) = %v, want nil", id, err)
		}
	}
	for id, want := range map[string]string{
		"":                                 "1 to 256 bytes, got 0",
		strings.Repeat("x", MaxRecordID+1): "1 to 256 bytes, got 257",
		"bad\xffutf8":                      "not valid UTF-8",
		"tab\there":                        "control character U+0009",
		"nul\x00":                          "control character U+0000",
		"del\x7f":                          "control character U+007F",
		"newline\n":                        "control character U+000A",
	} {
		err := ValidateRecordID(id)
		if err == nil {
			t.Errorf("ValidateRecordID(%q) = nil, want an error", id)
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("ValidateRecordID(%q) = %q, want it to say %q", id, err, want)
		}
	}
}
