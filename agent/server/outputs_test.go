package server

import (
	"maps"
	"strings"
	"testing"

	"github.com/slipway-ci/slipway/agent/agentapi"
)

func TestParseOutputs(t *testing.T) {
	tests := []struct {
		name, in string
		want     map[string]string
		wantErr  string
	}{
		{name: "plain", in: "A=1\nB=two words\n\nC=\n", want: map[string]string{"A": "1", "B": "two words", "C": ""}},
		{name: "value with =", in: "URL=a=b&c=d\n", want: map[string]string{"URL": "a=b&c=d"}},
		{name: "later wins", in: "A=1\nA=2\n", want: map[string]string{"A": "2"}},
		{name: "crlf", in: "A=1\r\nB<<E\r\nx\r\nE\r\n", want: map[string]string{"A": "1", "B": "x"}},
		{name: "heredoc", in: "J<<EOF\n{\n  \"k\": 1\n}\nEOF\nK=v\n", want: map[string]string{"J": "{\n  \"k\": 1\n}", "K": "v"}},
		{name: "empty heredoc", in: "J<<EOF\nEOF\n", want: map[string]string{"J": ""}},
		{name: "unclosed heredoc", in: "J<<EOF\nA=1\n", want: map[string]string{"A": "1"}, wantErr: "line 1: the heredoc of J is never closed"},
		{name: "bad name", in: "A=1\n1X=2\nB=3\n", want: map[string]string{"A": "1", "B": "3"}, wantErr: "line 2"},
		{name: "no separator", in: "just text\nA=1", want: map[string]string{"A": "1"}, wantErr: "line 1"},
		{name: "empty delimiter", in: "J<<\n", want: map[string]string{}, wantErr: "bad heredoc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, problems := parseOutputs([]byte(tt.in))
			err := outputProblems(problems)
			if (err == nil) != (tt.wantErr == "") || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err %v, want %q", err, tt.wantErr)
			}
			if !maps.Equal(got, tt.want) {
				t.Fatalf("got %q, want %q: the good lines are kept", got, tt.want)
			}
		})
	}
}

func FuzzParseOutputs(f *testing.F) {
	f.Add([]byte("A=1\nB<<EOF\nx\nEOF\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		out, _ := parseOutputs(data)
		for name := range out {
			if !agentapi.IsVarName(name) {
				t.Fatalf("accepted output name %q", name)
			}
		}
	})
}
