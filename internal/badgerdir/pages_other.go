//go:build !linux

package badgerdir

// Release does nothing where the process's mappings cannot be listed.
func (p *TablePages) Release() (advised int64, err error) { return 0, nil }
