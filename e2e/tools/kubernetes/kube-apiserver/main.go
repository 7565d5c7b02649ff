// Command kube-apiserver is the real Kubernetes API server, built from
// the k8s.io/kubernetes module for the end-to-end test that proves the
// files `render` writes under DIR/kubernetes/ (CA, client certificate and
// key, endpoints) are what an API server needs to use the cluster as its
// external etcd. It is the upstream main, unchanged; it lives in its own
// module so the product's go.mod never depends on Kubernetes.
package main

import (
	"os"
	_ "time/tzdata"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
