package secret_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/internal/awstest"
	"github.com/slipway-ci/slipway/internal/secret"
)

func TestSealAndOpenOnLocalKMS(t *testing.T) {
	c := awstest.KMS(t)
	key := awstest.SymmetricKey(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sealer := &secret.Sealer{KMS: c, KeyID: key}
	opener := &secret.Opener{KMS: c}
	secrets := map[string]string{"TOKEN": "hunter2-token-value", "MULTI": "line one\nline two"}

	sealed, err := sealer.Seal(ctx, "stage-1", secrets)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range secrets {
		for _, form := range [][]byte{[]byte(v), []byte(base64.StdEncoding.EncodeToString([]byte(v)))} {
			if bytes.Contains(sealed, form) {
				t.Fatalf("the sealed value holds %q", form)
			}
		}
	}
	again, err := sealer.Seal(ctx, "stage-1", secrets)
	if err != nil || bytes.Equal(again, sealed) {
		t.Fatal("two seals of the same secrets are equal: no fresh key or nonce")
	}
	got, err := opener.Open(ctx, "stage-1", sealed)
	if err != nil || len(got) != 2 || got["TOKEN"] != secrets["TOKEN"] || got["MULTI"] != secrets["MULTI"] {
		t.Fatalf("open: %v %v", got, err)
	}

	// Another stage's record, damage, truncation: ErrOpen, never a panic or
	// garbage.
	tampered := bytes.Clone(sealed)
	tampered[len(tampered)-1] ^= 1
	for _, tc := range []struct {
		name, stage string
		sealed      []byte
	}{
		{"another stage", "stage-2", sealed},
		{"tampered", "stage-1", tampered},
		{"truncated", "stage-1", sealed[:len(sealed)/2]},
		{"short", "stage-1", sealed[:2]},
		{"unknown format", "stage-1", append([]byte{9}, sealed[1:]...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, err := opener.Open(ctx, tc.stage, tc.sealed); !errors.Is(err, secret.ErrOpen) || got != nil {
				t.Fatalf("open: %v %v", got, err)
			}
		})
	}

	if sealed, err := sealer.Seal(ctx, "stage-3", nil); err != nil || sealed != nil {
		t.Fatalf("no secrets: %v %v", sealed, err)
	}
	if got, err := opener.Open(ctx, "stage-3", nil); err != nil || got != nil {
		t.Fatalf("open nothing: %v %v", got, err)
	}
}
