// Package winefix makes a Windows build behave under Wine 8.0, which the
// agent's Windows tests run on (.ci/wine). It is imported only by builds
// tagged wine, which need -ldflags=-checklinkname=0; elsewhere it is empty.
package winefix
