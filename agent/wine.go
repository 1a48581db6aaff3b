//go:build windows && wine

package main

import (
	"strings"
	"unsafe"

	"golang.org/x/sys/windows"

	// The agent's Windows build under Wine, as its tests run it (agent/winetest).
	_ "github.com/slipway-ci/slipway/internal/winefix"
)

// Wine runs services in a session other than 0, so Windows' test (parent
// services.exe in session 0) never holds there: under Wine a service is a
// process whose parent is services.exe.
func init() { isWindowsService = parentIsServicesExe }

func parentIsServicesExe() (bool, error) {
	snap, err := windows.CreateToolhelp32Snapshot(windows.TH32CS_SNAPPROCESS, 0)
	if err != nil {
		return false, err
	}
	defer func() { _ = windows.CloseHandle(snap) }()
	self := windows.GetCurrentProcessId()
	names := map[uint32]string{}
	var parent uint32
	entry := windows.ProcessEntry32{Size: uint32(unsafe.Sizeof(windows.ProcessEntry32{}))}
	for err = windows.Process32First(snap, &entry); err == nil; err = windows.Process32Next(snap, &entry) {
		names[entry.ProcessID] = windows.UTF16ToString(entry.ExeFile[:])
		if entry.ProcessID == self {
			parent = entry.ParentProcessID
		}
	}
	return strings.EqualFold(names[parent], "services.exe"), nil
}
