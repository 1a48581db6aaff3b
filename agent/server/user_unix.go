//go:build unix

package server

import (
	"fmt"
	"os"

	"github.com/slipway-ci/slipway/agent/executor"
)

// chownTo gives path to the step's user ("uid" or "uid:gid"), with the group
// the step runs with.
func chownTo(path, user string) error {
	cred, err := executor.Credential(user)
	if err != nil {
		return err
	}
	if err := os.Chown(path, int(cred.Uid), int(cred.Gid)); err != nil {
		return fmt.Errorf("give the outputs folder to user %s: %w", user, err)
	}
	return nil
}
