package firstboot

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"etcdimg/ignition/ign"
	"etcdimg/internal/layout"
)

// UnitDir is where applied units are written, as on a systemd host.
const UnitDir = "/etc/systemd/system"

// Apply writes cfg's directories, files, links and units under root ("/"
// in the appliance, a temporary directory in tests). It checks the whole
// config before writing anything.
//
// It applies the subset of Ignition that an etcd member needs:
// directories, files and links with inline contents, and systemd units,
// as package ignition writes them (or a person, compatibly). Any other
// section is refused before anything is touched, so a config the
// appliance cannot honour stops the boot instead of half-applying.
func Apply(cfg ign.Config, root string) error {
	if err := supported(cfg); err != nil {
		return err
	}
	type write struct {
		path      string
		data      []byte
		mode      fs.FileMode
		overwrite bool
	}
	var writes []write
	for _, f := range cfg.Storage.Files {
		data, err := ign.Contents(f)
		if err != nil {
			return fmt.Errorf("firstboot: apply: %w", err)
		}
		writes = append(writes, write{f.Path, data, mode(f.Mode, 0o644), f.Overwrite != nil && *f.Overwrite})
	}
	for _, u := range cfg.Systemd.Units {
		if u.Contents != nil {
			writes = append(writes, write{filepath.Join(UnitDir, u.Name), []byte(*u.Contents), 0o644, true})
		}
	}

	for _, d := range cfg.Storage.Directories {
		p := under(root, d.Path)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fmt.Errorf("firstboot: apply: directory %s: %w", d.Path, err)
		}
		if err := os.Chmod(p, mode(d.Mode, 0o755)); err != nil {
			return fmt.Errorf("firstboot: apply: directory %s: %w", d.Path, err)
		}
	}
	for _, w := range writes {
		p := under(root, w.path)
		if !w.overwrite {
			if _, err := os.Lstat(p); err == nil {
				return fmt.Errorf("firstboot: apply: file %s exists and overwrite is false; set overwrite: true", w.path)
			}
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("firstboot: apply: file %s: %w", w.path, err)
		}
		// Remove first so that the new mode applies even when the file
		// existed with another one.
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("firstboot: apply: file %s: %w", w.path, err)
		}
		if err := os.WriteFile(p, w.data, w.mode); err != nil {
			return fmt.Errorf("firstboot: apply: file %s: %w", w.path, err)
		}
	}
	for _, l := range cfg.Storage.Links {
		p := under(root, l.Path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("firstboot: apply: link %s: %w", l.Path, err)
		}
		if l.Overwrite != nil && *l.Overwrite {
			os.Remove(p)
		}
		var err error
		if l.Hard != nil && *l.Hard {
			err = os.Link(under(root, *l.Target), p)
		} else {
			err = os.Symlink(*l.Target, p)
		}
		if err != nil {
			return fmt.Errorf("firstboot: apply: link %s: %w", l.Path, err)
		}
	}
	return nil
}

// supported refuses every part of Ignition the appliance does not do.
func supported(cfg ign.Config) error {
	s := cfg.Storage
	switch {
	case len(s.Disks) > 0:
		return errors.New("firstboot: storage.disks is not supported; the appliance finds and formats its data disk itself")
	case len(s.Filesystems) > 0:
		return errors.New("firstboot: storage.filesystems is not supported; the appliance mounts its data disk at " + layout.DataMount + " itself")
	case len(s.Raid) > 0 || len(s.Luks) > 0:
		return errors.New("firstboot: storage.raid and storage.luks are not supported; remove them")
	case len(cfg.Passwd.Users) > 0 || len(cfg.Passwd.Groups) > 0:
		return errors.New("firstboot: passwd is not supported; the appliance has no logins, remove it")
	case len(cfg.KernelArguments.ShouldExist) > 0 || len(cfg.KernelArguments.ShouldNotExist) > 0:
		return errors.New("firstboot: kernelArguments is not supported; the image's boot entry sets them")
	case cfg.Ignition.Config.Replace.Source != nil || len(cfg.Ignition.Config.Merge) > 0:
		return errors.New("firstboot: ignition.config.merge/replace is not supported; the appliance fetches nothing, inline everything")
	}
	check := func(kind, path string, user, group *int, uname, gname *string) error {
		if (user != nil && *user != 0) || (group != nil && *group != 0) ||
			(uname != nil && *uname != "root") || (gname != nil && *gname != "root") {
			return fmt.Errorf("firstboot: %s %s: only root ownership is supported; drop user/group", kind, path)
		}
		return nil
	}
	for _, f := range s.Files {
		if err := check("file", f.Path, f.User.ID, f.Group.ID, f.User.Name, f.Group.Name); err != nil {
			return err
		}
		if _, err := ign.Contents(f); err != nil {
			return fmt.Errorf("firstboot: %w", err)
		}
	}
	for _, d := range s.Directories {
		if err := check("directory", d.Path, d.User.ID, d.Group.ID, d.User.Name, d.Group.Name); err != nil {
			return err
		}
	}
	for _, u := range cfg.Systemd.Units {
		if len(u.Dropins) > 0 {
			return fmt.Errorf("firstboot: unit %s: dropins are not supported; put the settings in the unit", u.Name)
		}
		if strings.Contains(u.Name, "/") {
			return fmt.Errorf("firstboot: unit %q: not a unit name", u.Name)
		}
	}
	return nil
}

func mode(m *int, def fs.FileMode) fs.FileMode {
	if m == nil {
		return def
	}
	return fs.FileMode(*m) & fs.ModePerm
}

// under joins an absolute config path onto root.
func under(root, path string) string {
	return filepath.Join(root, filepath.Clean("/"+path))
}
