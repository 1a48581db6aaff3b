// Package winetest runs the agent's Windows build under Wine and drives it
// over mutual TLS from this machine, as an orchestrator would: cmd scripts,
// exit codes, environment and ids in Windows' terms, outputs, masking, the
// job object, timeouts, cancel and destroy. Wine is not Windows: what it
// cannot do is named and skipped in the tests, and docs/agent.md says what has
// run where.
package winetest
