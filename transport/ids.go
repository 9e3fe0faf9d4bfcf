package transport

import (
	"fmt"
	"unicode/utf8"
)

// MaxRecordID is the longest record ID, in bytes.
const MaxRecordID = 256

// ValidateRecordID reports whether id may name a record: 1 to MaxRecordID
// bytes of valid UTF-8 with no control characters (below U+0020, or
// U+007F). Stores rely on it: record IDs never hold a NUL, so a NUL can
// end them in keys. A device refuses to store a record under another ID,
// and the relay refuses a push that names one with bad_frame. The error
// says what is wrong, for the caller to wrap.
func ValidateRecordID(id string) error {
	if id == "" || len(id) > MaxRecordID {
		return fmt.Errorf("record ID must be 1 to %d bytes, got %d", MaxRecordID, len(id))
	}
	if !utf8.ValidString(id) {
		return fmt.Errorf("record ID %q is not valid UTF-8", id)
	}
	for _, r := range id {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("record ID %q holds control character %U", id, r)
		}
	}
	return nil
}
