package crdt

// Reading a document's fields in one call into Automerge.
//
// automerge-go reads a map through one call per level that wraps every
// value in Go objects with finalizers (which free the Rust results they
// hold); a record's read model read that way cost more than applying the
// change that made it, and a past version's fields (a merge's three-way
// diff) could only be read by forking the document, which replays its
// history. packedRead walks the document in C instead, through
// automerge-c's range reads, which take heads for a past version, and
// writes the packed form (see packed.go) in one buffer.
//
// The declarations below are automerge-c's, copied from the automerge.h
// that the automerge-go module in go.mod bundles (as free.go's are):
// TestPackedReadMatchesAutomergeGo compares every read with automerge-go's
// over random documents, and past versions with forks.

/*
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct AMdoc AMdoc;
typedef struct AMitem AMitem;
typedef struct AMobjId AMobjId;
typedef struct AMresult AMresult;
typedef struct AMbyteSpan { const uint8_t *src; size_t count; } AMbyteSpan;
typedef struct AMitems { uint8_t detail[8 + 8 + 8]; } AMitems;
typedef uint8_t AMobjType;
typedef uint8_t AMstatus;
typedef uint32_t AMvalType;

enum { AM_OBJ_LIST = 1, AM_OBJ_MAP = 2, AM_OBJ_TEXT = 3 };
enum { AM_OK = 0 };
enum {
	AM_BOOL = 1 << 2, AM_BYTES = 1 << 3, AM_COUNTER = 1 << 6, AM_F64 = 1 << 8,
	AM_INT = 1 << 9, AM_NULL = 1 << 11, AM_OBJ = 1 << 12, AM_STR = 1 << 13,
	AM_TIMESTAMP = 1 << 17, AM_UINT = 1 << 18, AM_UNKNOWN = 1 << 19, AM_VOID = 1 << 0,
};

AMresult *AMitemFromChangeHash(AMbyteSpan value);
AMresult *AMresultCat(const AMresult *dest, const AMresult *src);
AMitems AMresultItems(AMresult *result);
AMstatus AMresultStatus(const AMresult *result);
void AMresultFree(AMresult *result);
AMitem *AMitemsNext(AMitems *items, ptrdiff_t n);
size_t AMitemsSize(const AMitems *items);
AMvalType AMitemValType(const AMitem *item);
bool AMitemKey(const AMitem *item, AMbyteSpan *value);
bool AMitemToBool(const AMitem *item, bool *value);
bool AMitemToBytes(const AMitem *item, AMbyteSpan *value);
bool AMitemToCounter(const AMitem *item, int64_t *value);
bool AMitemToF64(const AMitem *item, double *value);
bool AMitemToInt(const AMitem *item, int64_t *value);
bool AMitemToStr(const AMitem *item, AMbyteSpan *value);
bool AMitemToTimestamp(const AMitem *item, int64_t *value);
bool AMitemToUint(const AMitem *item, uint64_t *value);
const AMobjId *AMitemObjId(const AMitem *item);
AMobjType AMobjObjType(const AMdoc *doc, const AMobjId *obj_id);
AMresult *AMmapRange(const AMdoc *doc, const AMobjId *obj_id, AMbyteSpan begin, AMbyteSpan end, const AMitems *heads);
AMresult *AMlistRange(const AMdoc *doc, const AMobjId *obj_id, size_t begin, size_t end, const AMitems *heads);
AMresult *AMtext(const AMdoc *doc, const AMobjId *obj_id, const AMitems *heads);

// The packed form's tags (packed.go).
enum { T_NIL, T_FALSE, T_TRUE, T_STRING, T_TEXT, T_BYTES, T_FLOAT, T_INT, T_UINT, T_TIME, T_COUNTER, T_MAP, T_LIST };

typedef struct {
	uint8_t *b;
	size_t n, cap;
	int failed;
	const AMdoc *doc;
	const AMitems *heads;
	int deleted;
	int max_depth; // past which packing fails (maxPackedDepth)
} ferry_out;

static void put(ferry_out *o, const void *p, size_t n) {
	if (o->failed || n == 0) return; // an empty span's src may be NULL
	if (o->n + n > o->cap) {
		size_t c = o->cap ? o->cap * 2 : 256;
		while (c < o->n + n) c *= 2;
		uint8_t *b = realloc(o->b, c);
		if (!b) { o->failed = 1; return; }
		o->b = b, o->cap = c;
	}
	memcpy(o->b + o->n, p, n);
	o->n += n;
}

static void put_byte(ferry_out *o, uint8_t c) { put(o, &c, 1); }

static void put_uvarint(ferry_out *o, uint64_t v) {
	uint8_t b[10];
	int i = 0;
	while (v >= 0x80) { b[i++] = (uint8_t)v | 0x80; v >>= 7; }
	b[i++] = (uint8_t)v;
	put(o, b, i);
}

// As Go's binary.AppendVarint: zigzag, then uvarint.
static void put_varint(ferry_out *o, int64_t v) {
	uint64_t u = (uint64_t)v << 1;
	if (v < 0) u = ~u;
	put_uvarint(o, u);
}

static void put_span(ferry_out *o, uint8_t tag, AMbyteSpan s) {
	put_byte(o, tag);
	put_uvarint(o, s.count);
	put(o, s.src, s.count);
}

static void put_obj(ferry_out *o, const AMobjId *obj, int depth);

static void put_item(ferry_out *o, const AMitem *it, int depth) {
	AMbyteSpan s;
	bool bv;
	int64_t i;
	uint64_t u;
	double f;
	if (depth + 1 > o->max_depth) { o->failed = 1; return; }
	switch (AMitemValType(it)) {
	case AM_BOOL:
		if (!AMitemToBool(it, &bv)) break;
		put_byte(o, bv ? T_TRUE : T_FALSE);
		return;
	case AM_STR:
		if (!AMitemToStr(it, &s)) break;
		put_span(o, T_STRING, s);
		return;
	case AM_BYTES:
		if (!AMitemToBytes(it, &s)) break;
		put_span(o, T_BYTES, s);
		return;
	case AM_F64:
		if (!AMitemToF64(it, &f)) break;
		put_byte(o, T_FLOAT);
		memcpy(&u, &f, 8);
		for (int k = 0; k < 8; k++) put_byte(o, (uint8_t)(u >> (8 * k)));
		return;
	case AM_INT:
		if (!AMitemToInt(it, &i)) break;
		put_byte(o, T_INT);
		put_varint(o, i);
		return;
	case AM_UINT:
		if (!AMitemToUint(it, &u)) break;
		put_byte(o, T_UINT);
		put_uvarint(o, u);
		return;
	case AM_COUNTER:
		if (!AMitemToCounter(it, &i)) break;
		put_byte(o, T_COUNTER);
		put_varint(o, i);
		return;
	case AM_TIMESTAMP:
		if (!AMitemToTimestamp(it, &i)) break;
		put_byte(o, T_TIME);
		put_varint(o, i);
		return;
	case AM_NULL:
	case AM_UNKNOWN:
	case AM_VOID:
		put_byte(o, T_NIL);
		return;
	case AM_OBJ:
		put_obj(o, AMitemObjId(it), depth + 1);
		return;
	}
	o->failed = 1;
}

// A map's or list's count is known only once its values are written:
// reserve_count reserves its room at its largest, and fill_count writes
// it and moves the values back over what it did not use.
static size_t reserve_count(ferry_out *o) {
	size_t at = o->n;
	uint8_t z[10] = {0};
	put(o, z, sizeof z);
	return at;
}

static void fill_count(ferry_out *o, size_t at, uint64_t count) {
	if (o->failed) return;
	uint8_t b[10];
	int k = 0;
	while (count >= 0x80) { b[k++] = (uint8_t)count | 0x80; count >>= 7; }
	b[k++] = (uint8_t)count;
	memcpy(o->b + at, b, k);
	memmove(o->b + at + k, o->b + at + 10, o->n - at - 10);
	o->n -= 10 - k;
}

static const char tombstone[] = "$deleted";

static void put_obj(ferry_out *o, const AMobjId *obj, int depth) {
	if (o->failed) return;
	if (depth > o->max_depth) { o->failed = 1; return; }
	AMobjType t = obj ? AMobjObjType(o->doc, obj) : AM_OBJ_MAP;
	AMresult *r;
	if (t == AM_OBJ_MAP) {
		AMbyteSpan none = {NULL, 0};
		r = AMmapRange(o->doc, obj, none, none, o->heads);
	} else if (t == AM_OBJ_LIST) {
		r = AMlistRange(o->doc, obj, 0, SIZE_MAX, o->heads);
	} else if (t == AM_OBJ_TEXT) {
		r = AMtext(o->doc, obj, o->heads);
	} else {
		o->failed = 1;
		return;
	}
	if (!r) { o->failed = 1; return; }
	if (AMresultStatus(r) != AM_OK) { o->failed = 1; AMresultFree(r); return; }
	AMitems items = AMresultItems(r);
	if (t == AM_OBJ_TEXT) {
		AMitem *it = AMitemsNext(&items, 1);
		AMbyteSpan s;
		if (!it || !AMitemToStr(it, &s)) o->failed = 1;
		else put_span(o, T_TEXT, s);
		AMresultFree(r);
		return;
	}
	put_byte(o, t == AM_OBJ_MAP ? T_MAP : T_LIST);
	size_t at = reserve_count(o);
	uint64_t count = 0;
	AMitem *it;
	while (!o->failed && (it = AMitemsNext(&items, 1)) != NULL) {
		if (t == AM_OBJ_MAP) {
			AMbyteSpan k;
			if (!AMitemKey(it, &k)) { o->failed = 1; break; }
			if (depth == 0 && k.count == sizeof tombstone - 1 && memcmp(k.src, tombstone, k.count) == 0) {
				bool bv;
				o->deleted = AMitemValType(it) == AM_BOOL && AMitemToBool(it, &bv) && bv;
				continue;
			}
			put_uvarint(o, k.count);
			put(o, k.src, k.count);
		}
		put_item(o, it, depth);
		count++;
	}
	fill_count(o, at, count);
	AMresultFree(r);
}

// ferry_packed_read writes doc's root map, at the heads hashes (n of 32
// bytes; none: its current version), in the packed form, version byte
// first, into *out (malloc'd, *outLen bytes), and sets *deleted from
// the tombstone key. It returns 0, or -1 if anything failed (*out is
// then NULL): the caller reads the document the slow way, which says
// why.
static int ferry_packed_read(const AMdoc *doc, const uint8_t *hashes, size_t n, int depth,
		uint8_t **out, size_t *outLen, int *deleted) {
	ferry_out o = {0};
	o.doc = doc;
	o.max_depth = depth;
	AMresult *heads = NULL;
	AMitems items;
	for (size_t i = 0; i < n && !o.failed; i++) {
		AMbyteSpan h = {hashes + 32 * i, 32};
		AMresult *r = AMitemFromChangeHash(h);
		if (!r || AMresultStatus(r) != AM_OK) {
			if (r) AMresultFree(r);
			o.failed = 1;
			break;
		}
		if (!heads) { heads = r; continue; }
		AMresult *cat = AMresultCat(heads, r);
		AMresultFree(heads);
		AMresultFree(r);
		heads = cat;
		if (!heads || AMresultStatus(heads) != AM_OK) o.failed = 1;
	}
	if (heads && !o.failed) {
		items = AMresultItems(heads);
		o.heads = &items;
	}
	put_byte(&o, 1); // packedVersion
	if (!o.failed) put_obj(&o, NULL, 0);
	if (heads) AMresultFree(heads);
	if (o.failed) {
		free(o.b);
		*out = NULL;
		return -1;
	}
	*out = o.b;
	*outLen = o.n;
	*deleted = o.deleted;
	return 0;
}
*/
import "C"

import (
	"unsafe"

	"github.com/automerge/automerge-go"
)

// packedRead reads am's fields at heads (none: its current version) in
// the packed form, and whether the record is a tombstone, in one call
// into Automerge. ok is false if the read failed or the fields do not
// pack (nested past maxPackedDepth): the caller reads them through
// automerge-go, which says why.
func packedRead(am *automerge.Doc, heads Heads) (packed []byte, deleted, ok bool) {
	if amLayoutErr != nil {
		return nil, false, false
	}
	m := (*amDoc)(unsafe.Pointer(am))
	// automerge-go holds this lock around every call into its core.
	m.m.Lock()
	defer m.m.Unlock()
	if m.cDoc == nil {
		return nil, false, false
	}
	var hashes *C.uint8_t
	var flat []byte
	if len(heads) > 0 {
		flat = make([]byte, 0, 32*len(heads))
		for _, h := range heads {
			flat = append(flat, h[:]...)
		}
		hashes = (*C.uint8_t)(C.CBytes(flat))
		defer C.free(unsafe.Pointer(hashes))
	}
	var out *C.uint8_t
	var n C.size_t
	var del C.int
	if C.ferry_packed_read((*C.AMdoc)(m.cDoc), hashes, C.size_t(len(heads)), C.int(maxPackedDepth), &out, &n, &del) != 0 {
		return nil, false, false
	}
	defer C.free(unsafe.Pointer(out))
	return C.GoBytes(unsafe.Pointer(out), C.int(n)), del != 0, true
}
