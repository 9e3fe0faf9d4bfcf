// Package lru is a bounded least-recently-used map, for caches of loaded
// documents: bounded by a size each entry reports (its bytes), handing
// each value that leaves to a callback that may release it, and never
// while a reader has it pinned.
package lru

import (
	"container/list"
	"sync"
)

// Cache maps keys to values, bounded by the sum of their sizes: adding
// past the bound evicts the least recently used. It is safe for
// concurrent use.
//
// A value leaves the cache when it is evicted, removed, replaced by
// another value for its key, or cleared. The eviction callback then
// receives it, once no pin holds it (see Acquire), unless it is back in
// the cache by then. The callback runs on the goroutine whose call made
// the value leave or dropped its last pin, with no lock of the cache
// held; it may call the cache.
//
// Get does not pin: a value it returns may leave the cache, and reach the
// callback, at any time. Use it only if the callback releases nothing a
// reader could still use, or if readers and the callback are serialized
// by other means.
type Cache[K comparable, V comparable] struct {
	mu      sync.Mutex
	max     int64
	size    int64                // sum of the sizes of the entries in order
	order   *list.List           // entries in the cache, most recent first; values are *entry
	byKey   map[K]*list.Element  // the entries in order, by key
	pinned  map[K][]*entry[K, V] // entries that left the cache while pinned
	onEvict func(key K, val V)
}

type entry[K comparable, V comparable] struct {
	key  K
	val  V
	size int64
	pins int
	in   bool // in the cache (in order), as opposed to left and pinned
}

// New returns a cache of at most n entries (at least 1), for values put
// with Put, with no eviction callback.
func New[K comparable, V comparable](n int) *Cache[K, V] {
	return NewSized[K, V](int64(max(1, n)), nil)
}

// NewSized returns a cache whose entries' sizes sum to at most maxSize,
// calling onEvict (if not nil) with each value that leaves it.
func NewSized[K comparable, V comparable](maxSize int64, onEvict func(key K, val V)) *Cache[K, V] {
	return &Cache[K, V]{
		max: maxSize, order: list.New(), byKey: map[K]*list.Element{},
		pinned: map[K][]*entry[K, V]{}, onEvict: onEvict,
	}
}

// left is what a call made leave the cache, for the callback once the
// lock is released.
type left[K comparable, V comparable] []*entry[K, V]

func (c *Cache[K, V]) release(l left[K, V]) {
	if c.onEvict == nil {
		return
	}
	for _, e := range l {
		c.onEvict(e.key, e.val)
	}
}

// Get returns the value for key and marks it recently used. It does not
// pin it (see Cache).
func (c *Cache[K, V]) Get(key K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.byKey[key]
	if !ok {
		var zero V
		return zero, false
	}
	c.order.MoveToFront(el)
	return el.Value.(*entry[K, V]).val, true
}

// Peek returns the value for key without marking it used or pinning it.
func (c *Cache[K, V]) Peek(key K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byKey[key]; ok {
		return el.Value.(*entry[K, V]).val, true
	}
	var zero V
	return zero, false
}

// Acquire returns the value for key, marks it recently used and pins it:
// it may still leave the cache, but reaches the eviction callback only
// once unpin has been called (once; later calls do nothing).
func (c *Cache[K, V]) Acquire(key K) (val V, unpin func(), ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.byKey[key]
	if !ok {
		return val, func() {}, false
	}
	c.order.MoveToFront(el)
	e := el.Value.(*entry[K, V])
	return e.val, c.pin(e), true
}

// Pin pins val, held for key in the cache or pinned after it left, as
// Acquire does, without marking it used. It returns ok=false if val has
// reached (or is on its way to) the eviction callback.
func (c *Cache[K, V]) Pin(key K, val V) (unpin func(), ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.find(key, val)
	if e == nil {
		return func() {}, false
	}
	return c.pin(e), true
}

// pin adds a pin to e and returns the function that drops it. c.mu is
// held.
func (c *Cache[K, V]) pin(e *entry[K, V]) func() {
	e.pins++
	var once sync.Once
	return func() { once.Do(func() { c.unpin(e) }) }
}

func (c *Cache[K, V]) unpin(e *entry[K, V]) {
	c.mu.Lock()
	e.pins--
	var l left[K, V]
	if e.pins == 0 && !e.in {
		c.unpark(e)
		l = append(l, e)
	}
	c.mu.Unlock()
	c.release(l)
}

// Put sets the value for key with size 1 (see New).
func (c *Cache[K, V]) Put(key K, val V) { c.PutSized(key, val, 1) }

// PutSized sets the value for key, of the given size, as the most
// recently used, and evicts the least recently used entries while the
// sizes sum to more than the bound (an entry larger than the bound is
// not kept). Putting the value already held for key only updates its size.
func (c *Cache[K, V]) PutSized(key K, val V, size int64) {
	c.mu.Lock()
	l, _ := c.put(key, val, size)
	l = c.evict(l)
	c.mu.Unlock()
	c.release(l)
}

// PutAcquire is PutSized, and pins the value as Acquire does, in one
// step: the value cannot reach the callback between the two.
func (c *Cache[K, V]) PutAcquire(key K, val V, size int64) (unpin func()) {
	c.mu.Lock()
	l, e := c.put(key, val, size)
	unpin = c.pin(e)
	l = c.evict(l)
	c.mu.Unlock()
	c.release(l)
	return unpin
}

// find returns the entry holding val for key, in the cache or pinned
// after leaving it. c.mu is held.
func (c *Cache[K, V]) find(key K, val V) *entry[K, V] {
	if el, ok := c.byKey[key]; ok && el.Value.(*entry[K, V]).val == val {
		return el.Value.(*entry[K, V])
	}
	for _, e := range c.pinned[key] {
		if e.val == val {
			return e
		}
	}
	return nil
}

// unpark forgets a pinned entry that left the cache. c.mu is held.
func (c *Cache[K, V]) unpark(e *entry[K, V]) {
	list := c.pinned[e.key]
	for i, p := range list {
		if p == e {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(c.pinned, e.key)
	} else {
		c.pinned[e.key] = list
	}
}

// put sets key to val under c.mu, without evicting for room, and
// returns what left and val's entry.
func (c *Cache[K, V]) put(key K, val V, size int64) (left[K, V], *entry[K, V]) {
	var l left[K, V]
	if el, ok := c.byKey[key]; ok {
		e := el.Value.(*entry[K, V])
		if e.val == val {
			c.size += size - e.size
			e.size = size
			c.order.MoveToFront(el)
			return l, e
		}
		l = c.leave(el, l)
	}
	// A value put back while pinned after it left is the same entry
	// again: its pins hold it, and it must not reach the callback.
	e := c.find(key, val)
	if e == nil {
		e = &entry[K, V]{key: key, val: val}
	} else {
		c.unpark(e)
	}
	e.size, e.in = size, true
	c.byKey[key] = c.order.PushFront(e)
	c.size += size
	return l, e
}

// evict removes least recently used entries while over the bound.
func (c *Cache[K, V]) evict(l left[K, V]) left[K, V] {
	for c.size > c.max && c.order.Len() > 0 {
		l = c.leave(c.order.Back(), l)
	}
	return l
}

// leave takes an entry out of the cache: to l for the callback, or, if
// pinned, aside until its last unpin.
func (c *Cache[K, V]) leave(el *list.Element, l left[K, V]) left[K, V] {
	e := el.Value.(*entry[K, V])
	c.order.Remove(el)
	delete(c.byKey, e.key)
	c.size -= e.size
	e.in = false
	if e.pins > 0 {
		c.pinned[e.key] = append(c.pinned[e.key], e)
		return l
	}
	return append(l, e)
}

// Remove drops key.
func (c *Cache[K, V]) Remove(key K) {
	c.mu.Lock()
	var l left[K, V]
	if el, ok := c.byKey[key]; ok {
		l = c.leave(el, nil)
	}
	c.mu.Unlock()
	c.release(l)
}

// Clear drops every entry.
func (c *Cache[K, V]) Clear() {
	c.mu.Lock()
	var l left[K, V]
	for c.order.Len() > 0 {
		l = c.leave(c.order.Back(), l)
	}
	c.mu.Unlock()
	c.release(l)
}

// Len returns the number of entries.
func (c *Cache[K, V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

// Size returns the sum of the entries' sizes.
func (c *Cache[K, V]) Size() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.size
}

// Trim evicts least recently used entries until their sizes sum to n less
// than before, or the cache is empty, to give memory back to something
// else; the bound stays as it was.
func (c *Cache[K, V]) Trim(n int64) {
	c.mu.Lock()
	var l left[K, V]
	for target := c.size - n; c.size > target && c.order.Len() > 0; {
		l = c.leave(c.order.Back(), l)
	}
	c.mu.Unlock()
	c.release(l)
}
