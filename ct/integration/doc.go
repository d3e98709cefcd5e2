// Package integration holds no code: its tests run the CA core (ca) with
// the real ct.Submitter against a real TesseraCT log and fake logs that
// fail on demand, end to end through the store. They live apart from
// package ct so that ct's unit tests do not depend on ca.
package integration
