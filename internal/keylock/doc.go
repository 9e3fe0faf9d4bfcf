// Package keylock serializes work per key with one lock per key in use: a
// key's lock exists while a goroutine holds or waits for it, so two keys
// never wait for each other, and memory follows the keys in use, not every
// key ever locked.
package keylock
