// Command kubectl-custody is the kubectl plugin `kubectl custody`: put it
// on PATH (or install it with krew, plugins/custody.yaml) and run
// `kubectl custody --help`. The commands are in internal/kubectlcustody.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/custody-dev/custody/internal/kubectlcustody"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := kubectlcustody.Run(ctx, os.Args[1:], kubectlcustody.Streams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr})
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		if errors.Is(err, kubectlcustody.ErrUndecided) {
			os.Exit(2) // neither bound nor denied: a script can tell "not yet" from "no"
		}
		os.Exit(1)
	}
}
