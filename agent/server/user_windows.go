package server

import "fmt"

// createOwnedFile: steps run as the agent's user on Windows, where the
// executor refuses Step.User.
func chownTo(_, user string) error {
	return fmt.Errorf("user %q: running a step as another user is not supported on Windows", user)
}
