package image

import (
	"io/fs"
	"syscall"
)

// allocated is the space a (sparse) file really takes on disk.
func allocated(st fs.FileInfo) int64 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Blocks * 512
	}
	return st.Size()
}
