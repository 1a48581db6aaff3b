package harnessrunner

import (
	"crypto/subtle"
	"net/http"
	"strings"
)

// MinTokenBytes is the shortest bearer token RequireToken takes.
const MinTokenBytes = 16

// RequireToken answers 401, in the runner's error shape, every request but
// GET /healthz that does not carry "Authorization: Bearer <token>": the
// runner acts on the deployment with this machine's credentials, so off
// loopback nobody may reach it unnamed.
func RequireToken(token string, next http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method == http.MethodGet && req.URL.Path == "/healthz" {
			next.ServeHTTP(w, req)
			return
		}
		got := []byte(strings.TrimSpace(req.Header.Get("Authorization")))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", "Bearer")
			writeError(w, &httpError{http.StatusUnauthorized, "a bearer token is required (Authorization: Bearer <token>)"})
			return
		}
		next.ServeHTTP(w, req)
	})
}
