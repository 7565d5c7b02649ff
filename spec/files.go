package spec

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// ReadInput reads a file the operator hands etcdimg (the spec, the files
// it names): at most max bytes (plus one, so the caller can tell a larger
// file), and only a regular file. What is not one is refused before it is
// opened: opening a FIFO waits for a writer for ever, and /dev/zero never
// ends. The open itself does not block either (O_NONBLOCK), for a file
// swapped for a FIFO in between, and the opened file is checked again.
func ReadInput(path string, max int64) ([]byte, error) {
	if st, err := os.Stat(path); err != nil {
		return nil, err
	} else if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s)", path, kind(st.Mode()))
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return nil, err
	} else if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s)", path, kind(st.Mode()))
	}
	return io.ReadAll(io.LimitReader(f, max+1))
}

// kind names a file mode's type for an error.
func kind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeDevice != 0:
		return "a device"
	}
	return "not a plain file"
}

// ResolveFiles makes the relative file names of the spec
// (backup.s3.credentialsFile and caFile) relative to base, the directory
// of the spec file that names them. A relative name means beside the
// spec, never the working directory: a run from another directory must
// not pick up that directory's files (another account's keys).
func (c *Cluster) ResolveFiles(base string) {
	s3 := c.Backup.S3
	if s3 == nil {
		return
	}
	for _, p := range []*string{&s3.CredentialsFile, &s3.CAFile} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
}
