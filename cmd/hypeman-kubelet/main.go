// Command hypeman-kubelet makes one hypemand a Kubernetes node
// (virtual-kubelet provider). CONTRACT SCAFFOLD (lead): filled by the
// kubelet runtime work.
package main

import (
	"fmt"
	"os"

	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"

	_ "hypeman/internal/kubelet/podmap"
)

func main() {
	var _ nodeutil.Provider
	fmt.Fprintln(os.Stderr, "hypeman-kubelet: not built yet")
	os.Exit(2)
}
