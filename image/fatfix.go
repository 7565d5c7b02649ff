package image

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
)

// fixFAT32 corrects two things go-diskfs v1.9.4's FAT32 writer leaves
// that fsck.vfat reports: the ".." entry of a directory in the root points
// at the root's cluster instead of 0 (as the FAT specification requires),
// and the FSInfo free-cluster count and next-free hint are left
// "unknown". offset is the partition's byte offset in the image.
func fixFAT32(path string, offset int64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	bs := make([]byte, 512)
	if _, err := f.ReadAt(bs, offset); err != nil {
		return err
	}
	if string(bs[82:87]) != "FAT32" || bs[510] != 0x55 || bs[511] != 0xAA {
		return errors.New("fix FAT32: no FAT32 boot sector")
	}
	bps := int64(binary.LittleEndian.Uint16(bs[11:13]))
	spc := int64(bs[13])
	reserved := int64(binary.LittleEndian.Uint16(bs[14:16]))
	nFATs := int64(bs[16])
	totalSectors := int64(binary.LittleEndian.Uint32(bs[32:36]))
	fatSectors := int64(binary.LittleEndian.Uint32(bs[36:40]))
	rootCluster := binary.LittleEndian.Uint32(bs[44:48])
	fsInfo := int64(binary.LittleEndian.Uint16(bs[48:50]))
	backupBoot := int64(binary.LittleEndian.Uint16(bs[50:52]))
	if bps == 0 || spc == 0 {
		return errors.New("fix FAT32: bad geometry")
	}
	clusterBytes := bps * spc
	dataStart := offset + (reserved+nFATs*fatSectors)*bps
	clusters := (totalSectors - reserved - nFATs*fatSectors) / spc

	fat := make([]byte, fatSectors*bps)
	if _, err := f.ReadAt(fat, offset+reserved*bps); err != nil {
		return err
	}
	entry := func(c uint32) uint32 { return binary.LittleEndian.Uint32(fat[4*c:]) & 0x0FFFFFFF }
	clusterOff := func(c uint32) int64 { return dataStart + int64(c-2)*clusterBytes }

	// Walk the root directory's cluster chain; fix ".." in each child.
	buf := make([]byte, clusterBytes)
	for c, n := rootCluster, 0; c >= 2 && c < 0x0FFFFFF8 && n < 1<<16; c, n = entry(c), n+1 {
		if _, err := f.ReadAt(buf, clusterOff(c)); err != nil {
			return err
		}
		for i := int64(0); i+32 <= clusterBytes; i += 32 {
			e := buf[i : i+32]
			if e[0] == 0 {
				break
			}
			attr := e[11]
			if e[0] == 0xE5 || attr == 0x0F || attr&0x10 == 0 || e[0] == '.' {
				continue
			}
			child := uint32(binary.LittleEndian.Uint16(e[20:22]))<<16 | uint32(binary.LittleEndian.Uint16(e[26:28]))
			if child < 2 {
				continue
			}
			dotdot := make([]byte, 32)
			at := clusterOff(child) + 32
			if _, err := f.ReadAt(dotdot, at); err != nil {
				return err
			}
			if string(dotdot[0:11]) != "..         " {
				return fmt.Errorf("fix FAT32: directory at cluster %d has no '..' entry", child)
			}
			binary.LittleEndian.PutUint16(dotdot[20:22], 0)
			binary.LittleEndian.PutUint16(dotdot[26:28], 0)
			if _, err := f.WriteAt(dotdot, at); err != nil {
				return err
			}
		}
	}

	// Count free clusters and find the first one.
	var free, next uint32 = 0, 0xFFFFFFFF
	for c := uint32(2); int64(c) < clusters+2; c++ {
		if entry(c) == 0 {
			free++
			if next == 0xFFFFFFFF {
				next = c
			}
		}
	}
	for _, sec := range []int64{fsInfo, backupBoot + fsInfo} {
		if sec == 0 || sec >= reserved {
			continue
		}
		info := make([]byte, 512)
		if _, err := f.ReadAt(info, offset+sec*bps); err != nil {
			return err
		}
		if string(info[0:4]) != "RRaA" || string(info[484:488]) != "rrAa" {
			continue
		}
		binary.LittleEndian.PutUint32(info[488:492], free)
		binary.LittleEndian.PutUint32(info[492:496], next)
		if _, err := f.WriteAt(info, offset+sec*bps); err != nil {
			return err
		}
	}
	return f.Sync()
}
