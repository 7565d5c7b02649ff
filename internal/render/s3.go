package render

import (
	"crypto/x509"
	"fmt"

	"etcdimg/ignition/ign"
	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
)

// maxS3File bounds backup.s3's credentials and CA files: a few lines and
// a certificate chain.
const maxS3File = 256 << 10

// s3Inputs reads the files backup.s3 names (its credentials and CA, by
// the paths LoadSpec resolved beside the spec file) and returns them,
// their copies for the output directory, and the spec to save there,
// which names those copies (relative to the directory, so that it can
// move): a later run from any working directory reads the same files. A
// spec without backup.s3 is saved as it is.
func s3Inputs(c *spec.Cluster, dir outdir.Layout) (saved *spec.Cluster, files []outdir.File, creds, ca []byte, err error) {
	s3 := c.Backup.S3
	if s3 == nil {
		return c, nil, nil, nil, nil
	}
	if creds, err = S3Credentials(s3.CredentialsFile); err != nil {
		return nil, nil, nil, nil, err
	}
	rel := func(p string) string { r, _ := dir.Rel(p); return r }
	copied := *s3
	copied.CredentialsFile = rel(dir.S3Credentials())
	files = append(files, outdir.File{Path: copied.CredentialsFile, Data: creds, Mode: 0o600})
	if s3.CAFile != "" {
		if ca, err = spec.ReadInput(s3.CAFile, maxS3File); err != nil {
			return nil, nil, nil, nil, fmt.Errorf("spec: backup.s3.caFile: %w; name the PEM file of the CA that signed the endpoint's certificate (a relative path is beside the spec)", err)
		}
		if len(ca) > maxS3File {
			return nil, nil, nil, nil, fmt.Errorf("spec: backup.s3.caFile %s is over %d KiB; name the CA's certificate file", s3.CAFile, maxS3File>>10)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(ca) {
			return nil, nil, nil, nil, fmt.Errorf("spec: backup.s3.caFile %s holds no PEM certificate; name the CA's certificate file", s3.CAFile)
		}
		copied.CAFile = rel(dir.S3CA())
		files = append(files, outdir.File{Path: copied.CAFile, Data: ca, Mode: 0o644})
	}
	cc := *c
	cc.Backup.S3 = &copied
	return &cc, files, creds, ca, nil
}

// S3Credentials reads backup.s3.credentialsFile and checks that it names
// both keys. Its bytes go into each member's config as they are. An
// error names a bad line by its number and key, never its value.
func S3Credentials(path string) ([]byte, error) {
	b, err := spec.ReadInput(path, maxS3File)
	if err != nil {
		return nil, fmt.Errorf("spec: backup.s3.credentialsFile: %w; name a file with AWS_ACCESS_KEY_ID= and AWS_SECRET_ACCESS_KEY= lines (a relative path is beside the spec)", err)
	}
	if len(b) > maxS3File {
		return nil, fmt.Errorf("spec: backup.s3.credentialsFile %s is over %d KiB; name the file with the two AWS_ lines", path, maxS3File>>10)
	}
	env, err := ign.EnvMap(b)
	if err != nil {
		return nil, fmt.Errorf("spec: backup.s3.credentialsFile %s: %w; write KEY=VALUE lines", path, err)
	}
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} {
		if env[k] == "" {
			return nil, fmt.Errorf("spec: backup.s3.credentialsFile %s has no %s=; add it", path, k)
		}
	}
	return b, nil
}
