//go:build windows && wine

package main

// The agent's Windows build under Wine, as its tests run it (agent/winetest).
import _ "github.com/slipway-ci/slipway/internal/winefix"
