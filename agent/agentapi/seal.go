package agentapi

import (
	"crypto/ecdh"
	"crypto/hpke"
	"encoding/base64"
	"fmt"
	"strings"
)

// SealedPrefix starts an output value sealed to the stage creator's key
// (Step.SecretOutputs): HPKE (RFC 9180) with DHKEM(X25519), HKDF-SHA256 and
// AES-128-GCM, base64. Only the holder of the private key reads it, so a
// secret output crosses Slipway's records and the delegate API as
// ciphertext.
const SealedPrefix = "hpke:"

// OutputKeyBytes is the size of Step.OutputKey, an X25519 public key.
const OutputKeyBytes = 32

// sealInfo binds a sealed value to its stage, step and name: a value moved
// to another output does not open.
func sealInfo(stage, step, name string) []byte {
	return []byte("slipway secret output\x00" + stage + "\x00" + step + "\x00" + name)
}

// SealOutput seals the value of output name of a step to publicKey.
func SealOutput(publicKey []byte, stage, step, name, value string) (string, error) {
	pub, err := ecdh.X25519().NewPublicKey(publicKey)
	if err != nil {
		return "", fmt.Errorf("output key: %w", err)
	}
	pk, err := hpke.NewDHKEMPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("output key: %w", err)
	}
	sealed, err := hpke.Seal(pk, hpke.HKDFSHA256(), hpke.AES128GCM(), sealInfo(stage, step, name), []byte(value))
	if err != nil {
		return "", fmt.Errorf("seal output %s: %w", name, err)
	}
	return SealedPrefix + base64.StdEncoding.EncodeToString(sealed), nil
}

// OpenOutput opens what SealOutput sealed to key's public key.
func OpenOutput(key *ecdh.PrivateKey, stage, step, name, sealed string) (string, error) {
	b64, ok := strings.CutPrefix(sealed, SealedPrefix)
	if !ok {
		return "", fmt.Errorf("output %s is not sealed", name)
	}
	data, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return "", fmt.Errorf("output %s: %w", name, err)
	}
	k, err := hpke.NewDHKEMPrivateKey(key)
	if err != nil {
		return "", fmt.Errorf("output key: %w", err)
	}
	value, err := hpke.Open(k, hpke.HKDFSHA256(), hpke.AES128GCM(), sealInfo(stage, step, name), data)
	if err != nil {
		return "", fmt.Errorf("open output %s: %w", name, err)
	}
	return string(value), nil
}
