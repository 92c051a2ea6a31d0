//go:build !linux

package controlplane

import "os"

// wrapChild returns binary unchanged: only Linux has a parent-death signal.
func wrapChild(_, _, binary, _ string) (string, error) { return binary, nil }

func runChild(childSpec) { os.Exit(127) }

// EndLeftovers finds nothing outside Linux.
func EndLeftovers(string) ([]string, error) { return nil, nil }
