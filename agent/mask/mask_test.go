package mask

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestMaskVariants(t *testing.T) {
	secret := `p@ss "word"/x+y`
	m := New(secret)
	tests := []struct {
		name string
		in   string
	}{
		{name: "raw", in: "token=" + secret + ";"},
		{name: "json", in: `{"token":"p@ss \"word\"/x+y"}`},
		{name: "single quoted", in: "echo '" + secret + "'"},
		{name: "backslash escaped", in: `+ echo p@ss\ \"word\"/x+y`},
		{name: "base64", in: "b64 " + base64.StdEncoding.EncodeToString([]byte(secret))},
		{name: "base64 url", in: "b64 " + base64.RawURLEncoding.EncodeToString([]byte(secret))},
		{name: "query escaped", in: "https://h/?t=" + url.QueryEscape(secret)},
		{name: "path escaped", in: "https://h/" + url.PathEscape(secret)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := m.MaskString(tt.in)
			if !strings.Contains(got, Replacement) {
				t.Fatalf("Mask(%q) = %q: nothing masked", tt.in, got)
			}
			for _, v := range Variants(secret) {
				if strings.Contains(got, v) {
					t.Fatalf("Mask(%q) = %q still holds variant %q", tt.in, got, v)
				}
			}
		})
	}
}

func TestMaskMultiLineSecretLineByLine(t *testing.T) {
	key := "-----BEGIN KEY-----\nMIIEvQIBADANBgkq\nhkiG9w0BAQEFAASC\n-----END KEY-----\n"
	m := New(key)
	got := m.MaskString("line: hkiG9w0BAQEFAASC\n")
	if got != "line: ******\n" {
		t.Fatalf("got %q", got)
	}
}

func TestMaskKeepsOtherText(t *testing.T) {
	m := New("secret1", "other")
	tests := []struct{ in, want string }{
		{in: "", want: ""},
		{in: "no secrets here", want: "no secrets here"},
		{in: "secret1", want: "******"},
		{in: "secret1secret1", want: "******"},
		{in: "a secret1 b other c", want: "a ****** b ****** c"},
		{in: "secret", want: "secret"},
		{in: "ssecret1", want: "s******"},
		{in: "secret1other", want: "******"},
	}
	for _, tt := range tests {
		if got := m.MaskString(tt.in); got != tt.want {
			t.Errorf("Mask(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestOverlappingPatternsMerge(t *testing.T) {
	m := Compile([]string{"bc", "abcd", "cdef"})
	if got := m.MaskString("xabcdefy"); got != "x******y" {
		t.Fatalf("got %q", got)
	}
}

// reference masks by brute force: mark every byte covered by any pattern,
// then replace each maximal run of marked bytes.
func reference(in string, patterns []string) string {
	covered := make([]bool, len(in))
	// Byte offsets, not runes: a secret may be any bytes, even half of a
	// multi-byte character.
	for i := 0; i < len(in); i++ {
		for _, p := range patterns {
			if p != "" && strings.HasPrefix(in[i:], p) {
				for j := i; j < i+len(p); j++ {
					covered[j] = true
				}
			}
		}
	}
	var b strings.Builder
	for i := 0; i < len(in); {
		if !covered[i] {
			b.WriteByte(in[i])
			i++
			continue
		}
		for i < len(in) && covered[i] {
			i++
		}
		b.WriteString(Replacement)
	}
	return b.String()
}

func TestWriterMatchesReferenceUnderAnySplit(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := "abc"
	for round := range 3000 {
		var patterns []string
		for range 1 + rng.IntN(4) {
			patterns = append(patterns, randString(rng, alphabet, 1+rng.IntN(4)))
		}
		in := randString(rng, alphabet, rng.IntN(40))
		want := reference(in, patterns)
		m := Compile(patterns)
		var out bytes.Buffer
		w := m.Writer(&out)
		rest := in
		for len(rest) > 0 {
			n := 1 + rng.IntN(len(rest))
			if _, err := w.Write([]byte(rest[:n])); err != nil {
				t.Fatal(err)
			}
			rest = rest[n:]
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if got := out.String(); got != want {
			t.Fatalf("round %d: patterns %q, input %q: got %q, want %q", round, patterns, in, got, want)
		}
	}
}

func randString(rng *rand.Rand, alphabet string, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[rng.IntN(len(alphabet))]
	}
	return string(b)
}

func TestSecretSplitAcrossWrites(t *testing.T) {
	m := New("hunter2-is-my-password")
	var out bytes.Buffer
	w := m.Writer(&out)
	for _, part := range []string{"login: hunter2", "-is-my", "-password\nnext line\n"} {
		if _, err := w.Write([]byte(part)); err != nil {
			t.Fatal(err)
		}
	}
	// Everything after the secret is out before Flush: the writer holds back
	// only what could still be a secret.
	if got := out.String(); got != "login: ******\nnext line\n" {
		t.Fatalf("before flush: %q", got)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "login: ******\nnext line\n" {
		t.Fatalf("after flush: %q", got)
	}
}

func TestWriterHoldsBackOnlyPossiblePrefixes(t *testing.T) {
	m := New("abcdef")
	var out bytes.Buffer
	w := m.Writer(&out)
	_, _ = w.Write([]byte("xyz abc"))
	if got := out.String(); got != "xyz " {
		t.Fatalf("got %q, want the bytes before the possible secret", got)
	}
	_, _ = w.Write([]byte("dx"))
	if got := out.String(); got != "xyz abcdx" {
		t.Fatalf("got %q", got)
	}
}

func FuzzWriter(f *testing.F) {
	f.Add("secret", "a secret here", uint8(3))
	f.Fuzz(func(t *testing.T, secret, in string, split uint8) {
		if secret == "" {
			return
		}
		m := Compile([]string{secret})
		var out bytes.Buffer
		w := m.Writer(&out)
		n := int(split) % (len(in) + 1)
		_, _ = w.Write([]byte(in[:n]))
		_, _ = w.Write([]byte(in[n:]))
		_ = w.Flush()
		if want := reference(in, []string{secret}); out.String() != want {
			t.Fatalf("got %q, want %q", out.String(), want)
		}
	})
}

// BenchmarkMaskThroughput: 1 GiB of 64-byte lines through a writer masking
// 10 secrets (about 90 patterns with their variants), in 256 KiB writes as
// the agent's pump makes them. Run with -benchtime 1x.
func BenchmarkMaskThroughput(b *testing.B) {
	var secrets []string
	for i := range 10 {
		secrets = append(secrets, fmt.Sprintf("s3cr3t-value-%02d-%x", i, i*7919))
	}
	m := New(secrets...)
	line := []byte(strings.Repeat("0123456789abcdef", 4)[:63] + "\n")
	chunk := bytes.Repeat(line, 4096)
	const total = 1 << 30
	start := time.Now()
	w := m.Writer(discard{})
	for n := 0; n < total; n += len(chunk) {
		_, _ = w.Write(chunk)
	}
	_ = w.Flush()
	fmt.Printf("BENCH mask_throughput %.1f MB/s secrets=10\n", total/1e6/time.Since(start).Seconds())
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func TestEmptyMatcherPassesThrough(t *testing.T) {
	m := New()
	var out bytes.Buffer
	w := m.Writer(&out)
	_, _ = w.Write([]byte("hello "))
	_, _ = w.Write([]byte("world"))
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if out.String() != "hello world" {
		t.Fatalf("got %q", out.String())
	}
}
