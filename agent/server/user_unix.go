//go:build unix

package server

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// createOwnedFile creates an empty file owned by user ("uid" or "uid:gid").
// chownTo gives path to the step's user ("uid" or "uid:gid").
func chownTo(path, user string) error {
	uidText, gidText, hasGID := strings.Cut(user, ":")
	uid, err := strconv.Atoi(uidText)
	if err != nil {
		return fmt.Errorf("user %q: %w", user, err)
	}
	gid := -1 // keep the group
	if hasGID {
		if gid, err = strconv.Atoi(gidText); err != nil {
			return fmt.Errorf("user %q: %w", user, err)
		}
	}
	if err := os.Chown(path, uid, gid); err != nil {
		return fmt.Errorf("give the outputs folder to user %s: %w", user, err)
	}
	return nil
}
