// Command etcd is the pinned etcd server the k8s test harness runs as the
// control plane's store. It is built from go.etcd.io/etcd/server/v3 because
// distribution packages are too old for current Kubernetes.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
