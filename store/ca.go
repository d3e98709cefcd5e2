package store

// caBuckets are the buckets behind ca.Store.
var caBuckets = [][]byte{}
