//go:build wine

package mask

// Under Wine, as make test runs this package's Windows build.
import _ "github.com/slipway-ci/slipway/internal/winefix"
