// Package secret seals a stage's secrets before they are stored: envelope
// encryption with a fresh data key from the deployment's KMS key for every
// sealed value, AES-256-GCM, and the stage id bound in twice, as KMS's
// encryption context (so only a caller naming the stage gets the key, and
// CloudTrail says which stage) and as the cipher's additional data (so a
// sealed value copied into another stage's record does not open).
//
// The API function only seals (kms:GenerateDataKey); only the functions that
// hand secrets to agents open (kms:Decrypt). Nothing here logs a value.
package secret

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// ContextKey is the encryption context key that names the stage.
const ContextKey = "slipway:stage"

// format is the first byte of a sealed value: its layout's version.
const format = 1

// DataKeys is what sealing needs of KMS; *kms.Client satisfies it.
type DataKeys interface {
	GenerateDataKey(ctx context.Context, params *kms.GenerateDataKeyInput, optFns ...func(*kms.Options)) (*kms.GenerateDataKeyOutput, error)
}

// Decrypter is what opening needs of KMS; *kms.Client satisfies it.
type Decrypter interface {
	Decrypt(ctx context.Context, params *kms.DecryptInput, optFns ...func(*kms.Options)) (*kms.DecryptOutput, error)
}

// Sealer seals values with data keys of one KMS key.
type Sealer struct {
	KMS   DataKeys
	KeyID string
}

// Opener opens sealed values.
type Opener struct {
	KMS Decrypter
}

// ErrOpen means a sealed value did not open: it is damaged, or belongs to
// another stage.
var ErrOpen = errors.New("sealed secrets do not open")

func encryptionContext(stageID string) map[string]string {
	return map[string]string{ContextKey: stageID}
}

func additionalData(stageID string) []byte { return []byte("slipway stage " + stageID) }

// Seal encrypts the stage's secrets. No secrets, no sealed value (nil) and
// no KMS call.
func (s *Sealer) Seal(ctx context.Context, stageID string, secrets map[string]string) ([]byte, error) {
	if len(secrets) == 0 {
		return nil, nil
	}
	plain, err := json.Marshal(secrets)
	if err != nil {
		return nil, fmt.Errorf("seal secrets of stage %s: %w", stageID, err)
	}
	defer clear(plain)
	out, err := s.KMS.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{
		KeyId: aws.String(s.KeyID), KeySpec: types.DataKeySpecAes256, EncryptionContext: encryptionContext(stageID),
	})
	if err != nil {
		return nil, fmt.Errorf("seal secrets of stage %s: data key: %w", stageID, err)
	}
	defer clear(out.Plaintext)
	if len(out.CiphertextBlob) > 0xffff {
		return nil, fmt.Errorf("seal secrets of stage %s: encrypted data key of %d bytes", stageID, len(out.CiphertextBlob))
	}
	aead, err := newAEAD(out.Plaintext)
	if err != nil {
		return nil, err
	}
	// format | key length | encrypted key | nonce | ciphertext and tag
	sealed := make([]byte, 0, 3+len(out.CiphertextBlob)+aead.NonceSize()+len(plain)+aead.Overhead())
	sealed = append(sealed, format)
	sealed = binary.BigEndian.AppendUint16(sealed, uint16(len(out.CiphertextBlob)))
	sealed = append(sealed, out.CiphertextBlob...)
	nonce := make([]byte, aead.NonceSize())
	_, _ = rand.Read(nonce) // crypto/rand.Read never fails
	sealed = append(sealed, nonce...)
	return aead.Seal(sealed, nonce, plain, additionalData(stageID)), nil
}

// Open decrypts the stage's sealed secrets; nil opens to none.
func (o *Opener) Open(ctx context.Context, stageID string, sealed []byte) (map[string]string, error) {
	if len(sealed) == 0 {
		return nil, nil
	}
	if len(sealed) < 3 || sealed[0] != format {
		return nil, fmt.Errorf("open secrets of stage %s: %w (unknown format)", stageID, ErrOpen)
	}
	n := int(binary.BigEndian.Uint16(sealed[1:3]))
	rest := sealed[3:]
	if len(rest) < n {
		return nil, fmt.Errorf("open secrets of stage %s: %w (truncated)", stageID, ErrOpen)
	}
	encryptedKey, rest := rest[:n], rest[n:]
	out, err := o.KMS.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: encryptedKey, EncryptionContext: encryptionContext(stageID)})
	if err != nil {
		var invalid *types.InvalidCiphertextException
		if errors.As(err, &invalid) {
			return nil, fmt.Errorf("open secrets of stage %s: %w (KMS: %s)", stageID, ErrOpen, invalid.ErrorMessage())
		}
		return nil, fmt.Errorf("open secrets of stage %s: data key: %w", stageID, err)
	}
	defer clear(out.Plaintext)
	aead, err := newAEAD(out.Plaintext)
	if err != nil {
		return nil, err
	}
	if len(rest) < aead.NonceSize() {
		return nil, fmt.Errorf("open secrets of stage %s: %w (truncated)", stageID, ErrOpen)
	}
	plain, err := aead.Open(nil, rest[:aead.NonceSize()], rest[aead.NonceSize():], additionalData(stageID))
	if err != nil {
		return nil, fmt.Errorf("open secrets of stage %s: %w", stageID, ErrOpen)
	}
	defer clear(plain)
	var secrets map[string]string
	if err := json.Unmarshal(plain, &secrets); err != nil {
		return nil, fmt.Errorf("open secrets of stage %s: %w (not a map)", stageID, ErrOpen)
	}
	return secrets, nil
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("data key: %w", err)
	}
	return cipher.NewGCM(block)
}
