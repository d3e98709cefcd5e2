package store

// acmeBuckets are the buckets behind acme.Store.
var acmeBuckets = [][]byte{}
