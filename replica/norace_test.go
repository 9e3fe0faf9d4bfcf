//go:build !race

package replica

// raceDetector reports whether the tests run under the race detector.
const raceDetector = false
