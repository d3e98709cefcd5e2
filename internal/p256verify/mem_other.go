//go:build !unix

package p256verify

import "filippo.io/nistec"

// pointsOffHeap is false: outside Unix tables stay on the Go heap.
const pointsOffHeap = false

// allocTable gives k a table of n points on the Go heap.
func allocTable(k *Key, n int) { k.table = make([]nistec.P256Point, n) }
