// Package stepfile opens the files a step wrote that the agent reads on the
// step's behalf (its outputs, its test reports). The agent runs as root and
// the step may not: where its file was to be, a step can leave a link to a
// file only root may read, or a FIFO that blocks whoever opens it.
package stepfile

import (
	"errors"
	"os"
	"path/filepath"
)

// ErrNotRegular is a step's file that is not a regular file.
var ErrNotRegular = errors.New("not a regular file")

// Open opens name under root for reading. A link that leads out of root is
// refused (os.Root), a FIFO or device is not waited on, and anything but a
// regular file is ErrNotRegular.
func Open(root *os.Root, name string) (*os.File, error) {
	f, err := root.OpenFile(name, os.O_RDONLY|openFlags, 0)
	if err != nil {
		return nil, err
	}
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !info.Mode().IsRegular() {
		f.Close()
		return nil, ErrNotRegular
	}
	return f, nil
}

// OpenPath opens path as Open does, its folder as the root: a link in its
// place may lead nowhere but beside it.
func OpenPath(path string) (*os.File, error) {
	root, err := os.OpenRoot(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	defer root.Close()
	return Open(root, filepath.Base(path))
}
