package logarchive_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net/http/httptest"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/slipway-ci/slipway/internal/logarchive"
)

func archives(t *testing.T) map[string]logarchive.Archive {
	fake := httptest.NewServer(gofakes3.New(s3mem.New()).Server())
	t.Cleanup(fake.Close)
	client := s3.New(s3.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(fake.URL), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider("test", "test", ""),
	})
	if _, err := client.CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String("logs")}); err != nil {
		t.Fatal(err)
	}
	return map[string]logarchive.Archive{
		"s3":  &logarchive.S3{Client: client, Bucket: "logs"},
		"dir": &logarchive.Dir{Root: t.TempDir()},
	}
}

// TestReadsGiveTheSameBytes: whatever the offset and limit, a read gives
// exactly the bytes of the log there, and its size; a big log goes up in
// parts.
func TestReadsGiveTheSameBytes(t *testing.T) {
	big := make([]byte, 12<<20+17)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range big {
		big[i] = byte('a' + r.IntN(26))
	}
	logs := map[string][]byte{"empty": {}, "small": []byte("hello\nworld\n"), "big": big}
	for name, a := range archives(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			for step, log := range logs {
				if err := a.Put(ctx, "st-1", step, bytes.NewReader(log)); err != nil {
					t.Fatalf("put %s: %v", step, err)
				}
			}
			for step, log := range logs {
				n := int64(len(log))
				for _, read := range []struct{ offset, limit int64 }{
					{0, 1 << 20}, {0, n + 10}, {3, 4}, {n / 2, 1 << 20}, {n - 1, 1}, {n, 10}, {n + 100, 10},
				} {
					if read.offset < 0 || read.limit <= 0 {
						continue
					}
					data, size, err := a.Read(ctx, "st-1", step, read.offset, read.limit)
					if err != nil {
						t.Fatalf("%s at %d+%d: %v", step, read.offset, read.limit, err)
					}
					want := []byte{}
					if read.offset < n {
						want = log[read.offset:min(n, read.offset+read.limit)]
					}
					if size != n || !bytes.Equal(data, want) {
						t.Fatalf("%s at %d+%d: %d bytes of %d, want %d of %d", step, read.offset, read.limit, len(data), size, len(want), n)
					}
				}
			}
			// A second Put replaces the log.
			if err := a.Put(ctx, "st-1", "small", bytes.NewReader([]byte("again"))); err != nil {
				t.Fatal(err)
			}
			if data, size, err := a.Read(ctx, "st-1", "small", 0, 100); err != nil || string(data) != "again" || size != 5 {
				t.Fatalf("after a second put: %q %d %v", data, size, err)
			}
			if _, _, err := a.Read(ctx, "st-1", "never", 0, 10); !errors.Is(err, logarchive.ErrNotFound) {
				t.Fatalf("a log never put: %v", err)
			}
			if err := a.Put(ctx, "../escape", "x", bytes.NewReader(nil)); err == nil {
				t.Fatal("a stage id with a path in it was taken")
			}
		})
	}
}
