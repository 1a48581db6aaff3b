// Package steplog keeps one step's log on disk: appended by the step's output
// pump, capped in size, read from any offset by any number of readers while it
// grows. Memory stays flat whatever a step prints: bytes go to the file, and
// readers read them back from it.
package steplog

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
)

// Log is one step's log file. The file is created at the first byte the
// step prints, by the pump: creating a file can take a disk's journal commit,
// and that belongs off the path that starts the step.
//
// Invariants, under mu: f is nil until the first write and then never
// changes; size is the file's length and only grows; once done is set, size
// is final; changed is closed and replaced whenever size grows or done is
// set, so a waiter that saw the old channel wakes up.
type Log struct {
	path string
	max  int64

	mu      sync.Mutex
	f       *os.File
	size    int64
	dropped int64
	done    bool
	changed chan struct{}
}

// New returns the log kept in the file at path, created (or truncated) when
// the first byte arrives; at most max bytes of step output are kept, and a
// marker line says how many were dropped.
func New(path string, max int64) *Log {
	return &Log{path: path, max: max, changed: make(chan struct{})}
}

// file returns the log file, creating it on first use. Only the writer calls it.
func (l *Log) file() (*os.File, error) {
	l.mu.Lock()
	f := l.f
	l.mu.Unlock()
	if f != nil {
		return f, nil
	}
	f, err := os.OpenFile(l.path, os.O_CREATE|os.O_TRUNC|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create step log: %w", err)
	}
	l.mu.Lock()
	l.f = f
	l.mu.Unlock()
	return f, nil
}

// Write appends p, or as much of it as the cap allows; the rest is counted as
// dropped. It reports len(p) so that a step never fails for printing too much.
func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	room := l.max - l.size
	l.mu.Unlock()
	keep := p
	if int64(len(keep)) > room {
		keep = keep[:max(room, 0)]
	}
	if len(keep) > 0 {
		f, err := l.file()
		if err != nil {
			return 0, err
		}
		// Only the pump writes, so the file offset is ours; readers use ReadAt.
		n, err := f.Write(keep)
		l.mu.Lock()
		l.size += int64(n)
		l.notifyLocked()
		l.mu.Unlock()
		if err != nil {
			return n, fmt.Errorf("write step log: %w", err)
		}
	}
	if dropped := len(p) - len(keep); dropped > 0 {
		l.mu.Lock()
		l.dropped += int64(dropped)
		l.mu.Unlock()
	}
	return len(p), nil
}

// Close ends the log: it appends the marker if output was dropped and wakes
// every reader. The file stays readable until Remove.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return nil
	}
	var err error
	if l.dropped > 0 && l.f != nil { // dropped > 0 means the cap was reached: the file exists
		marker := fmt.Sprintf("\n[slipway: %d bytes of output dropped: the step printed more than the %d-byte log limit]\n", l.dropped, l.max)
		var n int
		n, err = l.f.WriteString(marker)
		l.size += int64(n)
	}
	l.done = true
	l.notifyLocked()
	return err
}

func (l *Log) notifyLocked() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// Size returns the bytes in the log now and whether the log has ended.
func (l *Log) Size() (size int64, done bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.size, l.done
}

// Wait blocks until the log holds more than offset bytes or has ended, or ctx
// is done, and returns Size.
func (l *Log) Wait(ctx context.Context, offset int64) (size int64, done bool, err error) {
	for {
		l.mu.Lock()
		size, done, changed := l.size, l.done, l.changed
		l.mu.Unlock()
		if size > offset || done {
			return size, done, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return size, done, ctx.Err()
		}
	}
}

// CopyTo copies the log bytes [off, end) to w through buf; end is at most
// what Size reported.
func (l *Log) CopyTo(w io.Writer, off, end int64, buf []byte) (int64, error) {
	if off >= end {
		return 0, nil
	}
	l.mu.Lock()
	f := l.f // not nil: Size was above off
	l.mu.Unlock()
	var written int64
	for off < end {
		chunk := buf[:min(int64(len(buf)), end-off)]
		n, err := f.ReadAt(chunk, off)
		if n > 0 {
			if _, werr := w.Write(chunk[:n]); werr != nil {
				return written, werr
			}
			off += int64(n)
			written += int64(n)
		}
		if err != nil && (err != io.EOF || n == 0) {
			return written, fmt.Errorf("read step log: %w", err)
		}
	}
	return written, nil
}

// Release closes the file; the log can no longer be read.
func (l *Log) Release() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	return l.f.Close()
}
