package steplog

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCapAndMarker(t *testing.T) {
	l := New(filepath.Join(t.TempDir(), "log"), 10)
	defer func() { _ = l.Release() }()
	for _, s := range []string{"12345", "67890abc", "def"} {
		if n, err := l.Write([]byte(s)); err != nil || n != len(s) {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	size, done := l.Size()
	var buf bytes.Buffer
	if _, err := l.CopyTo(&buf, 0, size, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	got := buf.String()
	if !done || !strings.HasPrefix(got, "1234567890\n[slipway: 6 bytes of output dropped") || int64(len(got)) != size {
		t.Fatalf("log %q (size %d, done %v)", got, size, done)
	}
}

func TestWaitWakesOnWriteAndClose(t *testing.T) {
	l := New(filepath.Join(t.TempDir(), "log"), 1<<20)
	defer func() { _ = l.Release() }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go func() {
		time.Sleep(20 * time.Millisecond)
		_, _ = l.Write([]byte("abc"))
		time.Sleep(20 * time.Millisecond)
		_ = l.Close()
	}()
	size, done, err := l.Wait(ctx, 0)
	if err != nil || size != 3 || done {
		t.Fatalf("first wait: %d %v %v", size, done, err)
	}
	size, done, err = l.Wait(ctx, 3)
	if err != nil || size != 3 || !done {
		t.Fatalf("second wait: %d %v %v", size, done, err)
	}
	short, cancelShort := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancelShort()
	if _, _, err := l.Wait(short, 3); err != nil {
		t.Fatalf("wait on an ended log: %v", err)
	}
}
