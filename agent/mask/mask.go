// Package mask hides secret values in step logs and outputs.
//
// A Matcher is an Aho-Corasick automaton compiled to a dense DFA over the
// secrets and their common encodings (Variants). A Writer streams bytes
// through it: it holds back only the bytes that could still turn out to be the
// start of a secret, so a secret split across two writes is still masked and
// the log stays live.
package mask

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/url"
	"slices"
	"strings"
)

// Replacement stands in for every masked run of bytes.
const Replacement = "******"

// minLineLength is the shortest line of a multi-line secret that is masked on
// its own; shorter lines ("-----", "}") would mask ordinary log text.
const minLineLength = 4

// Variants returns the forms in which a secret commonly reaches a log: as is,
// JSON-escaped, shell-quoted, base64 and URL-encoded, and each line of a
// multi-line secret.
func Variants(secret string) []string {
	if secret == "" {
		return nil
	}
	forms := []string{
		secret,
		jsonEscaped(secret),
		"'" + strings.ReplaceAll(secret, "'", `'\''`) + "'",
		shellEscaped(secret),
		base64.StdEncoding.EncodeToString([]byte(secret)),
		// Unpadded forms also match where the encoded secret sits inside a longer
		// encoded text, aligned.
		base64.RawStdEncoding.EncodeToString([]byte(secret)),
		base64.RawURLEncoding.EncodeToString([]byte(secret)),
		url.QueryEscape(secret),
		url.PathEscape(secret),
	}
	if strings.ContainsAny(secret, "\r\n") {
		for _, line := range strings.FieldsFunc(secret, func(r rune) bool { return r == '\n' || r == '\r' }) {
			if line = strings.TrimSpace(line); len(line) >= minLineLength {
				forms = append(forms, line, jsonEscaped(line))
			}
		}
	}
	return forms
}

func jsonEscaped(s string) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // encoding a string cannot fail
	out := strings.TrimSuffix(buf.String(), "\n")
	return out[1 : len(out)-1]
}

// shellEscaped is the secret with each shell metacharacter backslash-escaped,
// as bash's printf %q and set -x print it.
func shellEscaped(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(" \t\"'\\$`!&|;<>()*?[]{}#~", r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Matcher is an immutable automaton over a set of patterns; it is safe for
// concurrent use by any number of Writers.
type Matcher struct {
	// trans[state][b] is the next state. States are numbered so that every
	// state at which a pattern ends is >= firstMatch: the hot loop tests one
	// integer per byte.
	trans      [][256]int32
	depth      []int32 // length of the longest pattern prefix that ends at the state
	matchLen   []int32 // length of the longest pattern that ends at the state
	firstMatch int32
	// starts[b] is whether some pattern starts with b: from the root state,
	// the hot loop skips other bytes without following the automaton.
	starts [256]bool
}

// New compiles a matcher over the variants of the given secrets. With no
// secrets it matches nothing.
func New(secrets ...string) *Matcher {
	var patterns []string
	for _, s := range secrets {
		patterns = append(patterns, Variants(s)...)
	}
	return Compile(patterns)
}

// Compile builds a matcher over the patterns as given.
func Compile(patterns []string) *Matcher {
	patterns = dedupe(patterns)
	// Build the trie.
	type node struct {
		next  map[byte]int32
		fail  int32
		depth int32
		match int32
	}
	nodes := []node{{next: map[byte]int32{}}}
	for _, p := range patterns {
		cur := int32(0)
		for i := 0; i < len(p); i++ {
			nxt, ok := nodes[cur].next[p[i]]
			if !ok {
				nxt = int32(len(nodes))
				nodes = append(nodes, node{next: map[byte]int32{}, depth: nodes[cur].depth + 1})
				nodes[cur].next[p[i]] = nxt
			}
			cur = nxt
		}
		nodes[cur].match = int32(len(p))
	}

	// Breadth-first: failure links, inherited matches and the dense transitions.
	n := len(nodes)
	trans := make([]int32, n*256)
	order := make([]int32, 0, n)
	queue := []int32{0}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		order = append(order, cur)
		if f := nodes[cur].fail; cur != 0 && nodes[f].match > nodes[cur].match {
			nodes[cur].match = nodes[f].match
		}
		for b := 0; b < 256; b++ {
			child, ok := nodes[cur].next[byte(b)]
			switch {
			case ok:
				if cur != 0 {
					nodes[child].fail = trans[int(nodes[cur].fail)<<8|b]
				}
				trans[int(cur)<<8|b] = child
				queue = append(queue, child)
			case cur != 0:
				trans[int(cur)<<8|b] = trans[int(nodes[cur].fail)<<8|b]
			}
		}
	}

	// Renumber: non-matching states first (root stays 0), matching states last.
	perm := make([]int32, n)
	next := int32(0)
	for _, s := range order {
		if nodes[s].match == 0 {
			perm[s] = next
			next++
		}
	}
	m := &Matcher{firstMatch: next, trans: make([][256]int32, n), depth: make([]int32, n), matchLen: make([]int32, n)}
	for _, s := range order {
		if nodes[s].match != 0 {
			perm[s] = next
			next++
		}
	}
	for b := range nodes[0].next {
		m.starts[b] = true
	}
	for old := range nodes {
		s := perm[old]
		m.depth[s] = nodes[old].depth
		m.matchLen[s] = nodes[old].match
		for b := 0; b < 256; b++ {
			m.trans[s][b] = perm[trans[old<<8|b]]
		}
	}
	return m
}

func dedupe(patterns []string) []string {
	out := slices.DeleteFunc(slices.Clone(patterns), func(p string) bool { return p == "" })
	slices.Sort(out)
	return slices.Compact(out)
}

// Empty reports whether the matcher has no patterns.
func (m *Matcher) Empty() bool { return len(m.depth) <= 1 }

// Mask returns b with every pattern occurrence replaced.
func (m *Matcher) Mask(b []byte) []byte {
	if m.Empty() {
		return b
	}
	var buf bytes.Buffer
	w := m.Writer(&buf)
	_, _ = w.Write(b) // bytes.Buffer writes cannot fail
	_ = w.Flush()
	return buf.Bytes()
}

// MaskString is Mask for strings.
func (m *Matcher) MaskString(s string) string {
	if m.Empty() {
		return s
	}
	return string(m.Mask([]byte(s)))
}

// run is a stretch of the stream [start, end) that matched; overlapping and
// touching matches merge into one run, printed as one Replacement.
type run struct {
	start, end int64
	emitted    bool // Replacement already written for this run
}

// Writer masks a stream on its way to an underlying writer. It is not safe
// for concurrent use.
type Writer struct {
	m     *Matcher
	out   io.Writer
	state int32
	pos   int64 // stream offset of the next input byte

	// pend holds the input bytes not yet written out; pend[0] is at stream
	// offset pendStart. It never holds more than the longest pattern.
	pend      []byte
	pendStart int64
	runs      []run
}

// Writer returns a masking writer in front of out. Call Flush at the end of
// the stream to write what it holds back.
func (m *Matcher) Writer(out io.Writer) *Writer {
	return &Writer{m: m, out: out}
}

// Write masks p and writes what is certain not to be part of a secret. It
// returns len(p) unless the underlying writer fails.
func (w *Writer) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	base := w.pos
	if w.m.Empty() {
		w.pos += int64(len(p))
		w.pendStart = w.pos
		if _, err := w.out.Write(p); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	m := w.m
	trans, firstMatch := m.trans, m.firstMatch
	s := w.state
	for i := 0; i < len(p); i++ {
		if s == 0 {
			for i < len(p) && !m.starts[p[i]] {
				i++
			}
			if i == len(p) {
				break
			}
		}
		s = trans[s][p[i]]
		if s >= firstMatch {
			end := base + int64(i) + 1
			w.addRun(end-int64(m.matchLen[s]), end)
		}
	}
	w.state = s
	w.pos += int64(len(p))

	data, dataStart := p, base
	if len(w.pend) > 0 {
		w.pend = append(w.pend, p...)
		data, dataStart = w.pend, w.pendStart
	}
	// No pattern that is still open can start before safe.
	safe := w.pos - int64(m.depth[s])
	if err := w.emit(data, dataStart, safe); err != nil {
		return 0, err
	}
	tail := data[safe-dataStart:]
	if len(w.pend) > 0 {
		w.pend = w.pend[:copy(w.pend, tail)]
	} else {
		w.pend = append(w.pend[:0], tail...)
	}
	w.pendStart = safe
	return len(p), nil
}

// Flush writes out everything held back; the stream may go on afterwards.
func (w *Writer) Flush() error {
	err := w.emit(w.pend, w.pendStart, w.pos)
	w.runs = w.runs[:0]
	w.pend = w.pend[:0]
	w.pendStart = w.pos
	w.state = 0
	return err
}

func (w *Writer) addRun(start, end int64) {
	emitted := false
	for len(w.runs) > 0 {
		last := w.runs[len(w.runs)-1]
		if start > last.end {
			break
		}
		start = min(start, last.start)
		end = max(end, last.end)
		emitted = emitted || last.emitted
		w.runs = w.runs[:len(w.runs)-1]
	}
	w.runs = append(w.runs, run{start: start, end: end, emitted: emitted})
}

// emit writes data[..upto-dataStart] with runs replaced. Runs that end
// before upto are done; one that reaches upto may still grow and is kept.
func (w *Writer) emit(data []byte, dataStart, upto int64) error {
	cur := dataStart
	for len(w.runs) > 0 && w.runs[0].start < upto {
		r := &w.runs[0]
		if r.start > cur {
			if _, err := w.out.Write(data[cur-dataStart : r.start-dataStart]); err != nil {
				return err
			}
			cur = r.start
		}
		if !r.emitted {
			if _, err := io.WriteString(w.out, Replacement); err != nil {
				return err
			}
			r.emitted = true
		}
		cur = max(cur, min(r.end, upto))
		if r.end >= upto {
			break
		}
		w.runs = w.runs[1:]
	}
	if upto > cur {
		if _, err := w.out.Write(data[cur-dataStart : upto-dataStart]); err != nil {
			return err
		}
	}
	return nil
}
