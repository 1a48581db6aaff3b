// Package mask hides secret values in step logs and outputs.
//
// A Matcher is an Aho-Corasick automaton over the secrets and their common
// encodings (Variants), dense where text spends its time and sparse deeper
// down (see Matcher). A Writer streams bytes
// through it: it holds back only the bytes that could still turn out to be the
// start of a secret, so a secret split across two writes is still masked and
// the log stays live.
package mask

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// Replacement stands in for every masked run of bytes.
const Replacement = "******"

// minLineLength is the shortest line of a multi-line secret that is masked on
// its own; shorter lines ("-----", "}") would mask ordinary log text.
const minLineLength = 4

// Variants returns the forms in which a secret commonly reaches a log: as
// is; JSON-escaped the ways the major languages' encoders write it; quoted
// for a shell; base64 (standard and URL alphabets, padded or not, and at
// each of the three alignments it can have inside a longer encoded text,
// as in base64("user:" + token)); percent-encoded (query and path escaping,
// every byte, upper- and lower-case hex); and each line of a multi-line
// secret.
func Variants(secret string) []string {
	if secret == "" {
		return nil
	}
	forms := []string{secret}
	forms = append(forms, jsonForms(secret)...)
	forms = append(forms, shellForms(secret)...)
	forms = append(forms, base64Forms([]byte(secret))...)
	forms = append(forms, percentForms(secret)...)
	if strings.ContainsAny(secret, "\r\n") {
		for _, line := range strings.FieldsFunc(secret, func(r rune) bool { return r == '\n' || r == '\r' }) {
			if line = strings.TrimSpace(line); len(line) >= minLineLength {
				forms = append(forms, line)
				forms = append(forms, jsonForms(line)...)
			}
		}
	}
	return dedupe(forms)
}

// jsonStyle is how one encoder writes a JSON string.
type jsonStyle struct {
	html      bool   // <, >, & as \u003c... (Go's default, Gson, .NET)
	ascii     bool   // every non-ASCII character as \u escapes (Python, PHP, .NET)
	slash     bool   // / as \/ (PHP)
	shortBF   bool   // \b and \f rather than \u0008 and \u000c
	upper     bool   // upper-case hex digits (.NET)
	alsoQuote string // further characters written as \u escapes (.NET: ' + `)
}

var jsonStyles = []jsonStyle{
	{html: true, shortBF: true},  // Go encoding/json (since 1.22), Gson
	{shortBF: true},              // Go without HTML escaping, JavaScript JSON.stringify, Jackson, serde_json
	{},                           // Go before 1.22, and encoders that write \b and \f as \u escapes
	{shortBF: true, ascii: true}, // Python json.dumps, Ruby's ascii_only
	{shortBF: true, ascii: true, slash: true},                               // PHP json_encode
	{shortBF: true, ascii: true, html: true, upper: true, alsoQuote: "'+`"}, // .NET System.Text.Json
}

func jsonForms(s string) []string {
	forms := make([]string, 0, len(jsonStyles))
	for _, st := range jsonStyles {
		forms = append(forms, st.escape(s))
	}
	return forms
}

func (st jsonStyle) escape(s string) string {
	hex := "0123456789abcdef"
	if st.upper {
		hex = "0123456789ABCDEF"
	}
	var b strings.Builder
	u := func(r rune) {
		b.WriteString(`\u`)
		for shift := 12; shift >= 0; shift -= 4 {
			b.WriteByte(hex[r>>uint(shift)&0xf])
		}
	}
	for i, r := range s {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			u(0xfffd) // an invalid byte, as Go's encoder writes it
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\b' && st.shortBF:
			b.WriteString(`\b`)
		case r == '\f' && st.shortBF:
			b.WriteString(`\f`)
		case r < 0x20, r == 0x2028 || r == 0x2029,
			st.html && (r == '<' || r == '>' || r == '&'),
			strings.ContainsRune(st.alsoQuote, r):
			u(r)
		case r == '/' && st.slash:
			b.WriteString(`\/`)
		case r >= 0x80 && st.ascii:
			if r > 0xffff {
				r1, r2 := utf16.EncodeRune(r)
				u(r1)
				u(r2)
			} else {
				u(r)
			}
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// shellForms are the secret single-quoted, double-quoted, and with each
// metacharacter backslash-escaped (as bash's printf %q and set -x write it).
func shellForms(s string) []string {
	var esc, dq strings.Builder
	for _, r := range s {
		if strings.ContainsRune(" \t\"'\\$`!&|;<>()*?[]{}#~", r) {
			esc.WriteByte('\\')
		}
		esc.WriteRune(r)
		if strings.ContainsRune("\"\\$`", r) {
			dq.WriteByte('\\')
		}
		dq.WriteRune(r)
	}
	return []string{"'" + strings.ReplaceAll(s, "'", `'\''`) + "'", esc.String(), `"` + dq.String() + `"`}
}

// minBase64Core is the shortest aligned core worth masking: shorter runs of
// base64 characters occur in ordinary text.
const minBase64Core = 6

// base64Forms are the secret's base64 encodings, whole, and the part of it
// that depends on the secret's bytes alone at each alignment k (the secret
// behind k mod 3 other bytes): the characters fully inside its bits.
func base64Forms(secret []byte) []string {
	var forms []string
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
		forms = append(forms, enc.EncodeToString(secret), enc.WithPadding(base64.NoPadding).EncodeToString(secret))
		for k := range 3 {
			text := enc.EncodeToString(append(make([]byte, k), secret...))
			from, to := (8*k+5)/6, 8*(k+len(secret))/6
			if to-from >= minBase64Core {
				forms = append(forms, text[from:to])
			}
		}
	}
	return forms
}

// percentForms are the secret query- and path-escaped, each also with
// lower-case hex, and every byte percent-encoded in upper and lower case.
func percentForms(s string) []string {
	var upper, lower strings.Builder
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&upper, "%%%02X", s[i])
		fmt.Fprintf(&lower, "%%%02x", s[i])
	}
	q, p := url.QueryEscape(s), url.PathEscape(s)
	return []string{q, p, lowerHex(q), lowerHex(p), upper.String(), lower.String()}
}

// lowerHex lower-cases the hex digits of percent escapes.
func lowerHex(s string) string {
	b := []byte(s)
	for i := 0; i+2 < len(b); i++ {
		if b[i] == '%' {
			b[i+1], b[i+2] = lowerByte(b[i+1]), lowerByte(b[i+2])
			i += 2
		}
	}
	return string(b)
}

func lowerByte(c byte) byte {
	if 'A' <= c && c <= 'F' {
		return c + 'a' - 'A'
	}
	return c
}

// Matcher is an immutable Aho-Corasick automaton over a set of patterns; it
// is safe for concurrent use by any number of Writers.
//
// Its shallow states (the first denseStates in breadth-first order, where
// ordinary text spends its time) have a dense transition table: one lookup
// per byte. The deeper ones, which a long secret makes by the thousand and
// which are mostly a chain of one child each, keep only their children and
// failure link: a dense row is 1 KiB, a deep state about 20 bytes, so the
// memory and the time to build grow with the patterns' total length by a
// small constant.
type Matcher struct {
	// dense[s][b] is the state after b in shallow state s, complemented
	// (negative) when that state ends a pattern: the hot loop tests one
	// sign per byte.
	dense [][256]int32
	// The children of every state s, sorted by label:
	// label[first[s]:first[s+1]] and child[first[s]:first[s+1]].
	first []int32
	label []byte
	child []int32
	fail  []int32
	// depth is the length of the pattern prefix a state stands for;
	// matchLen the length of the longest pattern that ends at it (0: none).
	depth    []int32
	matchLen []int32
	// starts[b] is whether some pattern starts with b, and pairs[b1<<8|b2]
	// whether one starts with b1 b2 (or is b1 alone): from the root state,
	// the hot loop skips other bytes two at a time without following the
	// automaton. Pairs matter: with base64 forms at every alignment, nearly
	// every letter and digit starts some pattern, but few pairs do.
	starts [256]bool
	pairs  *[1 << 16]bool
}

// denseStates bounds the shallow states with a dense row (1 KiB each).
const denseStates = 2048

// New compiles a matcher over the variants of the given secrets. With no
// secrets it matches nothing.
func New(secrets ...string) *Matcher {
	var patterns []string
	for _, s := range secrets {
		patterns = append(patterns, Variants(s)...)
	}
	return Compile(patterns)
}

// Text masks a short text, such as an error message, with secrets: every
// variant replaced, longest first, without the automaton New builds, whose
// size grows with the secrets' (about 600 bytes per byte), not the text's.
func Text(s string, secrets ...string) string {
	var forms []string
	for _, secret := range secrets {
		forms = append(forms, Variants(secret)...)
	}
	slices.SortFunc(forms, func(a, b string) int { return len(b) - len(a) })
	for _, form := range forms {
		if len(form) <= len(s) && strings.Contains(s, form) {
			s = strings.ReplaceAll(s, form, Replacement)
		}
	}
	return s
}

// Compile builds a matcher over the patterns as given.
func Compile(patterns []string) *Matcher { return compile(patterns, denseStates) }

func compile(patterns []string, maxDense int) *Matcher {
	patterns = dedupe(patterns) // sorted: each pattern's new nodes hang off the previous one's path
	// The trie, as first-child / next-sibling lists in insertion order.
	total := 1
	for _, p := range patterns {
		total += len(p)
	}
	var (
		firstChild = make([]int32, 1, total)
		lastChild  = make([]int32, 1, total)
		sibling    = make([]int32, 1, total)
		labels     = make([]byte, 1, total)
		ends       = make([]int32, 1, total)
		path       []int32 // the previous pattern's nodes, path[i] after i+1 bytes
		prev       string
	)
	firstChild[0], lastChild[0], sibling[0] = -1, -1, -1
	for _, p := range patterns {
		common := 0
		for common < len(p) && common < len(prev) && p[common] == prev[common] {
			common++
		}
		path = path[:common]
		cur := int32(0)
		if common > 0 {
			cur = path[common-1]
		}
		for k := common; k < len(p); k++ {
			n := int32(len(labels))
			firstChild, lastChild, sibling = append(firstChild, -1), append(lastChild, -1), append(sibling, -1)
			labels, ends = append(labels, p[k]), append(ends, 0)
			// Sorted patterns arrive in label order: a new child is the last.
			if lastChild[cur] < 0 {
				firstChild[cur] = n
			} else {
				sibling[lastChild[cur]] = n
			}
			lastChild[cur] = n
			path = append(path, n)
			cur = n
		}
		ends[cur] = int32(len(p))
		prev = p
	}

	// Renumber breadth-first, so the shallow states come first, and lay the
	// children out contiguously.
	n := len(labels)
	order := make([]int32, 0, n) // order[new] = old
	order = append(order, 0)
	m := &Matcher{first: make([]int32, n+1), label: make([]byte, n-1), child: make([]int32, n-1),
		fail: make([]int32, n), depth: make([]int32, n), matchLen: make([]int32, n)}
	edges := int32(0)
	for q := 0; q < len(order); q++ {
		old := order[q]
		m.first[q] = edges
		for c := firstChild[old]; c >= 0; c = sibling[c] {
			id := int32(len(order))
			m.label[edges], m.child[edges] = labels[c], id
			m.depth[id] = m.depth[q] + 1
			m.matchLen[id] = ends[c]
			order = append(order, c)
			edges++
		}
	}
	m.first[n] = edges
	m.pairs = new([1 << 16]bool)
	for k := m.first[0]; k < m.first[1]; k++ {
		b1, c := m.label[k], m.child[k]
		m.starts[b1] = true
		if m.first[c] == m.first[c+1] || ends[order[c]] > 0 { // b1 alone is a pattern
			for b2 := range 256 {
				m.pairs[int(b1)<<8|b2] = true
			}
		}
		for j := m.first[c]; j < m.first[c+1]; j++ {
			m.pairs[int(b1)<<8|int(m.label[j])] = true
		}
	}

	// Failure links and inherited matches, breadth-first; then the dense
	// rows of the shallow states, each from its failure state's row.
	nd := min(n, maxDense)
	m.dense = make([][256]int32, nd)
	for s := 0; s < n; s++ {
		for k := m.first[s]; k < m.first[s+1]; k++ {
			c := m.child[k]
			if s != 0 {
				m.fail[c] = m.next(m.fail[s], m.label[k])
			}
			if f := m.fail[c]; m.matchLen[f] > m.matchLen[c] {
				m.matchLen[c] = m.matchLen[f]
			}
		}
		if s < nd {
			row := &m.dense[s]
			if s != 0 {
				*row = m.dense[m.fail[s]] // shallower, so done (and not flagged yet)
			}
			for k := m.first[s]; k < m.first[s+1]; k++ {
				row[m.label[k]] = m.child[k]
			}
		}
	}
	// Flag the transitions into states that end a pattern.
	for s := range m.dense {
		for b, t := range m.dense[s] {
			if m.matchLen[t] > 0 {
				m.dense[s][b] = ^t
			}
		}
	}
	return m
}

func unflag(v int32) int32 {
	if v < 0 {
		return ^v
	}
	return v
}

// next is the state after b in state s, following failure links from a
// deep state until a child or a shallow state answers.
func (m *Matcher) next(s int32, b byte) int32 {
	for {
		if int(s) < len(m.dense) {
			return unflag(m.dense[s][b])
		}
		for k := m.first[s]; k < m.first[s+1]; k++ {
			if m.label[k] == b {
				return m.child[k]
			}
		}
		s = m.fail[s]
	}
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
	// err is the underlying writer's first failure: from then on the
	// stream is read and dropped, and Flush returns it.
	err error
}

// Writer returns a masking writer in front of out. Call Flush at the end of
// the stream to write what it holds back, and to learn whether out failed.
func (m *Matcher) Writer(out io.Writer) *Writer {
	return &Writer{m: m, out: out}
}

// Write masks p and writes what is certain not to be part of a secret. It
// always takes all of p: once the underlying writer has failed (a full
// disk), the rest of the stream is dropped rather than refused, so that
// the process writing it is never blocked on a pipe nobody reads, and Flush
// returns the failure.
func (w *Writer) Write(p []byte) (int, error) {
	if len(p) == 0 || w.failed() {
		return len(p), nil // dropped after a failure: Flush reports it
	}
	base := w.pos
	if w.m.Empty() {
		w.pos += int64(len(p))
		w.pendStart = w.pos
		if _, err := w.out.Write(p); err != nil {
			w.fail(err)
		}
		return len(p), nil
	}
	m := w.m
	dense, starts, pairs := m.dense, &m.starts, m.pairs
	shallow := int32(len(dense))
	s := w.state
	for i := 0; i < len(p); i++ {
		if s == 0 {
			for i+1 < len(p) && (!starts[p[i]] || !pairs[uint16(p[i])<<8|uint16(p[i+1])]) {
				i++
			}
			if i+1 == len(p) && !starts[p[i]] {
				break
			}
			if i == len(p) {
				break
			}
		}
		if s >= shallow {
			if s = m.next(s, p[i]); m.matchLen[s] > 0 {
				w.addRun(base+int64(i)+1-int64(m.matchLen[s]), base+int64(i)+1)
			}
			continue
		}
		if s = dense[s][p[i]]; s < 0 {
			s = ^s
			w.addRun(base+int64(i)+1-int64(m.matchLen[s]), base+int64(i)+1)
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
		w.fail(err)
		return len(p), nil
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
// It returns the underlying writer's failure, this one's or an earlier
// Write's.
func (w *Writer) Flush() error {
	if w.err != nil {
		return w.err
	}
	if err := w.emit(w.pend, w.pendStart, w.pos); err != nil {
		w.fail(err)
		return w.err
	}
	w.runs = w.runs[:0]
	w.pend = w.pend[:0]
	w.pendStart = w.pos
	w.state = 0
	return nil
}

func (w *Writer) failed() bool { return w.err != nil }

// fail records the underlying writer's first failure and drops what is
// held back: nothing more is written.
func (w *Writer) fail(err error) {
	w.err = err
	w.pend, w.runs = nil, nil
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
