//go:build wine

package agentapi

// Under Wine, as make test runs this package's Windows build.
import _ "github.com/slipway-ci/slipway/internal/winefix"
