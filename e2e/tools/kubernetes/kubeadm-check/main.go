// Command kubeadm-check reads a kubeadm configuration file the way
// `kubeadm init --config` does, with kubeadm's own code from
// k8s.io/kubernetes v1.34.2: strict decoding (an unknown or misspelled
// field is an error here, not only a warning), defaulting, and kubeadm's
// validation. It prints the external etcd it found, one field a line.
package main

import (
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/runtime"
	kubeadmscheme "k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm/scheme"
	"k8s.io/kubernetes/cmd/kubeadm/app/componentconfigs"
	kubeadmutil "k8s.io/kubernetes/cmd/kubeadm/app/util"
	"k8s.io/kubernetes/cmd/kubeadm/app/util/config"
	"k8s.io/kubernetes/cmd/kubeadm/app/util/config/strict"
	"sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: kubeadm-check FILE")
		os.Exit(2)
	}
	if err := check(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "kubeadm-check:", err)
		os.Exit(1)
	}
}

func check(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	docs, err := kubeadmutil.SplitConfigDocuments(b)
	if err != nil {
		return err
	}
	for gvk, doc := range docs {
		if err := strict.VerifyUnmarshalStrict([]*runtime.Scheme{kubeadmscheme.Scheme, componentconfigs.Scheme}, gvk, doc); err != nil {
			return err
		}
	}
	// Without kubernetesVersion kubeadm asks the network for the latest
	// stable release (and falls back offline); the version this tool is
	// built from is given instead, so that nothing is fetched.
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return err
	}
	if _, ok := doc["kubernetesVersion"]; !ok {
		doc["kubernetesVersion"] = "v1.34.2"
	}
	if b, err = yaml.Marshal(doc); err != nil {
		return err
	}
	cfg, err := config.BytesToInitConfiguration(b, true)
	if err != nil {
		return err
	}
	ext := cfg.Etcd.External
	if ext == nil {
		return fmt.Errorf("no etcd.external in %s", path)
	}
	for _, e := range ext.Endpoints {
		fmt.Println("endpoint", e)
	}
	fmt.Println("caFile", ext.CAFile)
	fmt.Println("certFile", ext.CertFile)
	fmt.Println("keyFile", ext.KeyFile)
	for _, a := range cfg.APIServer.ExtraArgs {
		fmt.Printf("apiServer.extraArgs %s=%s\n", a.Name, a.Value)
	}
	return nil
}
