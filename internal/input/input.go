// Package input opens the files an operator hands etcdimg (a spec, the
// files it names, a snapshot) so that no kind of file can hang a
// command: only a regular file is opened.
package input

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// ErrNotRegular is returned, wrapped with the path and the file's kind,
// for what is not a regular file.
var ErrNotRegular = errors.New("not a regular file")

// OpenRegular opens path for reading if it is a regular file. What is
// not one is refused before it is opened: opening a FIFO waits for a
// writer for ever, and /dev/zero never ends. The open itself does not
// block either (O_NONBLOCK), for a file swapped for a FIFO in between,
// and the opened file is checked again; its FileInfo is returned.
func OpenRegular(path string) (*os.File, os.FileInfo, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, nil, notRegular(path, st.Mode())
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	if st, err = f.Stat(); err != nil {
		f.Close()
		return nil, nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, nil, notRegular(path, st.Mode())
	}
	return f, st, nil
}

func notRegular(path string, m os.FileMode) error {
	return fmt.Errorf("%s is %w (%s)", path, ErrNotRegular, kind(m))
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
