package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/windows/svc"
)

// serviceName is the name the Windows user data registers the agent under.
const serviceName = "slipway-agent"

// runAsService runs the agent under the service control manager when Windows
// started it as a service, and as a console program otherwise.
func runAsService(run func(context.Context, []string) error) error {
	isService, err := isWindowsService()
	if err != nil {
		return fmt.Errorf("detect windows service: %w", err)
	}
	if !isService {
		return run(context.Background(), os.Args[1:])
	}
	h := &serviceHandler{run: run, errc: make(chan error, 1)}
	if err := svc.Run(serviceName, h); err != nil {
		return fmt.Errorf("run service: %w", err)
	}
	return <-h.errc
}

// isWindowsService tells a service from a console program: the parent is
// services.exe in session 0.
var isWindowsService = svc.IsWindowsService

type serviceHandler struct {
	run  func(context.Context, []string) error
	errc chan error
}

// Execute runs the agent until the service control manager asks it to stop.
func (h *serviceHandler) Execute(args []string, requests <-chan svc.ChangeRequest, status chan<- svc.Status) (bool, uint32) {
	status <- svc.Status{State: svc.StartPending}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.run(ctx, os.Args[1:]) }()
	status <- svc.Status{State: svc.Running, Accepts: svc.AcceptStop | svc.AcceptShutdown}
	for {
		select {
		case err := <-done:
			cancel()
			h.errc <- err
			if err != nil {
				return true, 1
			}
			return false, 0
		case req := <-requests:
			switch req.Cmd {
			case svc.Interrogate:
				status <- req.CurrentStatus
			case svc.Stop, svc.Shutdown:
				status <- svc.Status{State: svc.StopPending}
				cancel()
			}
		}
	}
}

func defaultWorkDir() string {
	return filepath.Join(os.Getenv("ProgramData"), "slipway", "work")
}
