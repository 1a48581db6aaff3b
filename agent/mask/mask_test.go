package mask

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf16"
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
		// Every split between shallow (dense) and deep states.
		m := compile(patterns, []int{denseStates, 1, 2, 5}[round%4])
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
		m := compile([]string{secret}, 1+int(split)%4)
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

// encodings are the ways a secret reaches a log that the masker must catch,
// each written here from the encoders themselves (or from Go's, changed the
// way another language's differs), not from the masker's variants. Each
// returns the text a step prints and the part of it that must not survive.
var encodings = map[string]func(rng *rand.Rand, secret string) (text, mustGo string){
	"raw": func(_ *rand.Rand, s string) (string, string) { return s, s },
	"json go": func(_ *rand.Rand, s string) (string, string) {
		b, _ := json.Marshal(s)
		return string(b), string(b[1 : len(b)-1])
	},
	"json go no html": func(_ *rand.Rand, s string) (string, string) { e := goJSON(s); return `"` + e + `"`, e },
	"json javascript": func(_ *rand.Rand, s string) (string, string) { e := jsJSON(s); return `"` + e + `"`, e },
	"json python":     func(_ *rand.Rand, s string) (string, string) { e := asciiJSON(jsJSON(s), "%04x"); return e, e },
	"json php": func(_ *rand.Rand, s string) (string, string) {
		e := strings.ReplaceAll(asciiJSON(jsJSON(s), "%04x"), "/", `\/`)
		return e, e
	},
	"json dotnet": func(_ *rand.Rand, s string) (string, string) {
		e := asciiJSON(jsJSON(s), "%04X")
		for _, c := range "<>&'+`" {
			e = strings.ReplaceAll(e, string(c), fmt.Sprintf(`\u%04X`, c))
		}
		return e, e
	},
	"single quoted": func(_ *rand.Rand, s string) (string, string) {
		q := "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
		return "echo " + q, q
	},
	"double quoted": func(_ *rand.Rand, s string) (string, string) {
		r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `$`, `\$`, "`", "\\`")
		q := `"` + r.Replace(s) + `"`
		return "export X=" + q, q
	},
	"query escaped": func(_ *rand.Rand, s string) (string, string) { q := url.QueryEscape(s); return "?t=" + q + "&x=1", q },
	"path escaped":  func(_ *rand.Rand, s string) (string, string) { q := url.PathEscape(s); return "/a/" + q + "/b", q },
	"every byte percent-encoded": func(rng *rand.Rand, s string) (string, string) {
		format := []string{"%%%02X", "%%%02x"}[rng.IntN(2)]
		var b strings.Builder
		for i := 0; i < len(s); i++ {
			fmt.Fprintf(&b, format, s[i])
		}
		return b.String(), b.String()
	},
	"base64 inside a longer text": func(rng *rand.Rand, s string) (string, string) {
		// base64("user:" + token + "@host"): the secret at any alignment,
		// in either alphabet; what depends on the secret's bytes alone
		// must go.
		prefix := randString(rng, "user:abc", rng.IntN(7))
		suffix := randString(rng, "@host", rng.IntN(5))
		enc := []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding}[rng.IntN(3)]
		text := enc.EncodeToString([]byte(prefix + s + suffix))
		from, to := (8*len(prefix)+5)/6, 8*(len(prefix)+len(s))/6
		return "Authorization: Basic " + text, text[from:to]
	},
}

func goJSON(s string) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	out := strings.TrimSpace(b.String())
	return out[1 : len(out)-1]
}

// jsJSON is Go's encoding as JSON.stringify writes it: \b and \f short.
func jsJSON(s string) string {
	return strings.NewReplacer(`\u0008`, `\b`, `\u000c`, `\f`).Replace(goJSON(s))
}

// asciiJSON writes every non-ASCII character of a JSON text as \u escapes.
func asciiJSON(s, hex string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r < 0x80:
			b.WriteRune(r)
		case r > 0xffff:
			r1, r2 := utf16.EncodeRune(r)
			fmt.Fprintf(&b, `\u`+hex+`\u`+hex, r1, r2)
		default:
			fmt.Fprintf(&b, `\u`+hex, r)
		}
	}
	return b.String()
}

// Random secrets, encoded each way, inside random text, written in random
// pieces: nothing of an encoded secret survives the masking.
func TestEncodedSecretsAreMaskedInAnyText(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 9))
	alphabet := []string{"abcXYZ019", " \"'\\$`&<>/+=?%#", "\t\n\b\f", "é€😀ü"}
	names := slices.Sorted(maps.Keys(encodings))
	tried := map[string]int{}
	for round := range 3000 {
		var sb strings.Builder
		for range 8 + rng.IntN(24) {
			set := alphabet[0]
			if rng.IntN(3) == 0 {
				set = alphabet[rng.IntN(len(alphabet))]
			}
			r := []rune(set)
			sb.WriteRune(r[rng.IntN(len(r))])
		}
		secret := sb.String()
		if strings.TrimSpace(secret) != secret || len(strings.TrimSpace(secret)) < 8 {
			continue // secrets are trimmed values; short ones have short encodings that text holds by chance
		}
		name := names[round%len(names)]
		text, mustGo := encodings[name](rng, secret)
		in := randString(rng, "lorem ipsum=:\n", rng.IntN(30)) + text + randString(rng, "dolor sit\n", rng.IntN(30))
		m := New(secret)
		var out bytes.Buffer
		w := m.Writer(&out)
		for rest := in; len(rest) > 0; {
			n := 1 + rng.IntN(len(rest))
			_, _ = w.Write([]byte(rest[:n]))
			rest = rest[n:]
		}
		_ = w.Flush()
		if strings.Contains(out.String(), mustGo) || !strings.Contains(out.String(), Replacement) {
			t.Fatalf("%s of %q: %q survived in %q", name, secret, mustGo, out.String())
		}
		tried[name]++
	}
	for _, name := range names {
		if tried[name] < 100 {
			t.Errorf("%s: only %d secrets tried", name, tried[name])
		}
	}
}

// BenchmarkMaskLargeSecrets: a matcher over secrets at the agent's limits
// (agentapi.MaxSecretsBytes in all, each at most MaxSecretBytes: here 4
// values of 32 KiB of printable text, each in all its variants), its build
// time and the memory it holds, and its throughput on a log.
func BenchmarkMaskLargeSecrets(b *testing.B) {
	rng := rand.New(rand.NewPCG(3, 4))
	var secrets []string
	total := 0
	for range 4 {
		s := randString(rng, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/=:-_. \"'<>&", 32<<10)
		secrets = append(secrets, s)
		total += len(s)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	m := New(secrets...)
	build := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&after)
	held := float64(after.HeapAlloc-before.HeapAlloc) / (1 << 20)
	line := []byte(strings.Repeat("0123456789abcdef", 4)[:63] + "\n")
	chunk := bytes.Repeat(line, 4096)
	const logBytes = 256 << 20
	start = time.Now()
	w := m.Writer(discard{})
	for n := 0; n < logBytes; n += len(chunk) {
		_, _ = w.Write(chunk)
	}
	_ = w.Flush()
	fmt.Printf("BENCH mask_large_secrets_build %.0f ms secret_bytes=%d states=%d heap_mib=%.1f bytes_per_secret_byte=%.0f throughput_mb_s=%.0f\n",
		float64(build.Microseconds())/1000, total, len(m.depth), held, held*(1<<20)/float64(total), logBytes/1e6/time.Since(start).Seconds())
	runtime.KeepAlive(m)
}

// Text masks a short text as a Matcher would, without building one.
func TestTextMasksLikeAMatcher(t *testing.T) {
	secrets := []string{"s3cr3t \"v4lue\"", "tok/en+=="}
	for _, text := range []string{
		`id "s3cr3t \"v4lue\"": want [A-Za-z0-9_-]`,
		"env name s3cr3t \"v4lue\" and tok/en+== and tok%2Fen%2B%3D%3D",
		"base64 " + base64.StdEncoding.EncodeToString([]byte("tok/en+==")),
		"nothing secret here",
	} {
		if got, want := Text(text, secrets...), New(secrets...).MaskString(text); got != want {
			t.Errorf("Text(%q) = %q, the matcher's %q", text, got, want)
		}
	}
}

// failingWriter takes room bytes, then fails every write, as a full disk
// does. It has only Write (no WriteString to go around it).
type failingWriter struct {
	buf  bytes.Buffer
	room int
}

func (f *failingWriter) Write(p []byte) (int, error) {
	if len(p) > f.room {
		n, _ := f.buf.Write(p[:f.room])
		f.room = 0
		return n, errors.New("no space left on device")
	}
	f.room -= len(p)
	return f.buf.Write(p)
}

// A writer whose output fails mid-stream takes the rest of the stream and
// drops it (a process writing to it is not blocked), never panics, never
// writes a secret, and Flush says what failed: at every point of failure,
// with and without secrets.
func TestWriterAfterItsOutputFailed(t *testing.T) {
	in := "build: token=s3cr3t-value ok\n" + strings.Repeat("line of output\n", 20) + "s3cr3t-value again\n"
	for _, m := range []*Matcher{New("s3cr3t-value"), New()} {
		whole := m.MaskString(in)
		for room := range len(whole) {
			for _, chunk := range []int{1, 7, len(in)} {
				out := &failingWriter{room: room}
				w := m.Writer(out)
				for rest := in; len(rest) > 0; {
					n := min(chunk, len(rest))
					if got, err := w.Write([]byte(rest[:n])); got != n || err != nil {
						t.Fatalf("room %d: Write took %d of %d: %v", room, got, n, err)
					}
					rest = rest[n:]
				}
				err := w.Flush()
				if err == nil || !strings.Contains(err.Error(), "no space left") {
					t.Fatalf("room %d, chunks of %d: Flush %v, want the output's failure", room, chunk, err)
				}
				if !m.Empty() && strings.Contains(out.buf.String(), "s3cr3t") {
					t.Fatalf("room %d: the secret was written: %q", room, out.buf.String())
				}
				if _, err := w.Write([]byte("more")); err != nil || w.Flush() == nil {
					t.Fatalf("room %d: after the failure: %v", room, err)
				}
			}
		}
	}
}
