//go:build windows && wine

package winefix

import _ "unsafe" // go:linkname

// Go's RemoveAll deletes each file with NtSetInformationFile's
// FileDispositionInformationEx (POSIX semantics, Windows 10 1607 and later).
// Wine 8.0 answers STATUS_INVALID_DEVICE_REQUEST, which Go does not take as
// "unsupported", so every RemoveAll fails with "Invalid function". This turns
// on the fallback Go keeps for older Windows and file systems without POSIX
// semantics (FAT32): a plain delete-on-close.
//
//go:linkname deleteatFallback internal/syscall/windows.TestDeleteatFallback
var deleteatFallback bool

func init() { deleteatFallback = true }
