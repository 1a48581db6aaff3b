package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/slipway-ci/slipway/internal/pki"
)

func runPKI(args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("pki: want init or issue")
	}
	fs := flag.NewFlagSet("slipway pki", flag.ContinueOnError)
	dir := fs.String("dir", "pki", "folder of the CA and certificates")
	now := time.Now()
	switch args[0] {
	case "init":
		lifetime := fs.Duration("lifetime", 5*365*24*time.Hour, "CA lifetime")
		if err := parse(fs, args[1:], 0, out); err != nil {
			return err
		}
		ca, err := pki.InitDir(*dir, *lifetime, now)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "created CA %q in %s, valid until %s\n", ca.Cert.Subject.CommonName, *dir, ca.Cert.NotAfter.Format(time.RFC3339))
		return nil
	case "issue":
		if len(args) < 2 || (args[1] != "server" && args[1] != "client") {
			return errors.New("pki issue: want server or client")
		}
		name := fs.String("name", "", "launch id of the VM (server certificates)")
		lifetime := fs.Duration("lifetime", 24*time.Hour, "certificate lifetime")
		if err := parse(fs, args[2:], 0, out); err != nil {
			return err
		}
		ca, err := pki.LoadCA(*dir)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("%w (run `slipway pki init --dir %s` first)", err, *dir)
			}
			return err
		}
		var pair pki.Pair
		if args[1] == "server" {
			if *name == "" {
				return errors.New("pki issue server: --name (the VM's launch id) is required")
			}
			pair, err = ca.IssueServerFiles(*dir, *name, *lifetime, now)
		} else {
			pair, err = ca.IssueClientFiles(*dir, *lifetime, now)
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "wrote %s and %s\n", pair.CertPath, pair.KeyPath)
		return nil
	default:
		return fmt.Errorf("pki: unknown command %q: want init or issue", args[0])
	}
}
