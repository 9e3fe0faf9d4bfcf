//go:build race

package doccheck

// raceBuild: the export data is read from the same (race) build as this
// test's, which is already in the build cache.
const raceBuild = true
