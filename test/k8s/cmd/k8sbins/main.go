// Command k8sbins builds (once) the pinned Kubernetes control-plane binaries
// the k8s tests use and prints the directory holding them. Run it before the
// k8s tests on a fresh host: the first build takes many minutes.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"hypeman/test/k8s/k8sbin"
)

func main() {
	cache := flag.String("cache", "", "cache root (default $HYPEMAN_K8S_CACHE, then "+k8sbin.DefaultCacheRoot+")")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	set, err := k8sbin.Ensure(ctx, k8sbin.Options{CacheRoot: *cache, Log: os.Stderr})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(set.Dir)
}
