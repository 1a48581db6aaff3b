package stepfile

// openFlags: Windows has no FIFOs in the file system to wait on.
const openFlags = 0
