// Package stripe serializes work per key without a lock per key: a key
// maps, by a hash, to one of a fixed set of read-write locks, so memory
// stays bounded however many keys there are, and two keys that share a
// stripe only wait for each other.
package stripe
