package spec

import (
	"io"
	"path/filepath"

	"etcdimg/internal/input"
)

// ReadInput reads a file the operator hands etcdimg (the spec, the files
// it names): at most max bytes (plus one, so the caller can tell a larger
// file), and only a regular file (input.OpenRegular: a FIFO or /dev/zero
// would hang the command).
func ReadInput(path string, max int64) ([]byte, error) {
	f, _, err := input.OpenRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, max+1))
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
