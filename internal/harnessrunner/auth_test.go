package harnessrunner

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestRequireToken(t *testing.T) {
	const token = "0123456789abcdef-token"
	h := RequireToken(token, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) }))
	tests := []struct {
		name, method, path, auth string
		want                     int
	}{
		{"no token", http.MethodPost, "/setup", "", http.StatusUnauthorized},
		{"wrong token", http.MethodPost, "/step", "Bearer nope", http.StatusUnauthorized},
		{"a prefix of the token", http.MethodPost, "/step", "Bearer 0123456789abcdef", http.StatusUnauthorized},
		{"basic, not bearer", http.MethodPost, "/destroy", "Basic " + token, http.StatusUnauthorized},
		{"the token", http.MethodPost, "/setup", "Bearer " + token, http.StatusTeapot},
		{"health without a token", http.MethodGet, "/healthz", "", http.StatusTeapot},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, tt.path, nil)
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tt.want {
				t.Errorf("%d, want %d: %s", rec.Code, tt.want, rec.Body)
			}
			if tt.want == http.StatusUnauthorized {
				checkShape(t, rec.Body.Bytes(), "error_response.json")
			}
		})
	}
}
