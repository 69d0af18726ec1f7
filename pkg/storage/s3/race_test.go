//go:build race

package s3

// raceEnabled: the race detector makes sync.Pool drop items at random,
// so allocation totals mean nothing.
const raceEnabled = true
