//go:build unix

package p256verify

import (
	"reflect"
	"runtime"
	"syscall"
	"unsafe"

	"filippo.io/nistec"
)

// A table is long-lived and large (92 KiB with 4-bit windows), and the
// garbage collector lets the heap grow to about twice what is live before
// it collects, so a table on the Go heap costs about twice its size in
// the process's memory. nistec's points are plain coordinates, with no Go
// pointers (checked by reflection at start-up; if a later nistec adds
// any, tables stay on the heap), so tables are mapped outside the heap
// instead and unmapped when their Key is collected: 16 ACME account
// tables then add about 1.5 MiB to the server's RSS, not 3.

// pointsOffHeap reports whether a P256Point may live outside the Go heap:
// memory the collector does not scan must hold no pointers.
var pointsOffHeap = !hasPointers(reflect.TypeFor[nistec.P256Point]())

func hasPointers(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return false
	case reflect.Array:
		return t.Len() > 0 && hasPointers(t.Elem())
	case reflect.Struct:
		for i := range t.NumField() {
			if hasPointers(t.Field(i).Type) {
				return true
			}
		}
		return false
	}
	return true
}

// allocTable gives k a table of n points, outside the Go heap when it can.
func allocTable(k *Key, n int) {
	if pointsOffHeap && n > 0 {
		size := n * int(unsafe.Sizeof(nistec.P256Point{}))
		mem, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
		if err == nil {
			k.table = unsafe.Slice((*nistec.P256Point)(unsafe.Pointer(&mem[0])), n)
			runtime.AddCleanup(k, func(m []byte) { _ = syscall.Munmap(m) }, mem)
			return
		}
	}
	k.table = make([]nistec.P256Point, n)
}
