package render

import (
	"bytes"
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"

	"etcdimg/internal/outdir"
	"etcdimg/internal/spec"
)

// KubeDir holds what a Kubernetes control plane needs to use the cluster
// as its external etcd: the CA, the API server's client pair (written by
// pki, CN spec.KubeAPIServerCN, whose etcd role allows /registry/ only),
// and the settings for kubeadm and for k3s/RKE2.
const (
	KubeDir     = outdir.KubeDir
	KubeCA      = "etcd-ca.pem"
	KubeadmFile = outdir.KubeadmFile
	K3sFile     = outdir.K3sFile
)

// The paths kubeadm documents for an external etcd's files on a
// control-plane node.
const (
	kubeadmCA   = "/etc/kubernetes/pki/etcd/ca.crt"
	kubeadmCert = "/etc/kubernetes/pki/apiserver-etcd-client.crt"
	kubeadmKey  = "/etc/kubernetes/pki/apiserver-etcd-client.key"
	// k3s and RKE2 take any path; these sit beside their config.
	k3sDir = "/etc/rancher/etcd"
)

// KubeEtcdArgs are the API server settings the cluster needs beyond its
// endpoints and files: the storage prefix its role allows, and no
// compaction of its own (etcd allows compaction to root only; the members
// compact themselves, etcd.autoCompactionRetention).
var KubeEtcdArgs = [][2]string{{"etcd-prefix", "/registry"}, {"etcd-compaction-interval", "0"}}

// KubeadmConfig is a kubeadm ClusterConfiguration (v1beta4) whose etcd is
// this cluster, for the paths kubeadm documents.
func KubeadmConfig(c *spec.Cluster) ([]byte, error) {
	type arg struct {
		Name  string `yaml:"name"`
		Value string `yaml:"value"`
	}
	doc := struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
		Etcd       struct {
			External struct {
				Endpoints []string `yaml:"endpoints"`
				CAFile    string   `yaml:"caFile"`
				CertFile  string   `yaml:"certFile"`
				KeyFile   string   `yaml:"keyFile"`
			} `yaml:"external"`
		} `yaml:"etcd"`
		APIServer struct {
			ExtraArgs []arg `yaml:"extraArgs"`
		} `yaml:"apiServer"`
	}{APIVersion: "kubeadm.k8s.io/v1beta4", Kind: "ClusterConfiguration"}
	ext := &doc.Etcd.External
	ext.Endpoints, ext.CAFile, ext.CertFile, ext.KeyFile = clientURLs(c, nil), kubeadmCA, kubeadmCert, kubeadmKey
	for _, a := range KubeEtcdArgs {
		doc.APIServer.ExtraArgs = append(doc.APIServer.ExtraArgs, arg{a[0], a[1]})
	}
	head := fmt.Sprintf(`# kubeadm: the etcd cluster %s as the control plane's external etcd,
# written by etcdimg. On every control-plane node, copy the files beside
# this one:
#   %-30s -> %s
#   %-30s -> %s
#   %-30s -> %s (mode 0600)
# and merge this ClusterConfiguration into the one given to kubeadm init.
# The certificate's etcd user may use /registry/ only; etcd lets only root
# compact, so the members compact themselves and the API server does not.
`, c.Name, KubeCA, kubeadmCA, "apiserver-etcd-client.pem", kubeadmCert, "apiserver-etcd-client-key.pem", kubeadmKey)
	return yamlDoc(head, doc)
}

// K3sConfig holds the datastore settings of k3s and RKE2 (their
// config.yaml keys) for this cluster.
func K3sConfig(c *spec.Cluster) ([]byte, error) {
	doc := struct {
		Endpoint string   `yaml:"datastore-endpoint"`
		CAFile   string   `yaml:"datastore-cafile"`
		CertFile string   `yaml:"datastore-certfile"`
		KeyFile  string   `yaml:"datastore-keyfile"`
		Args     []string `yaml:"kube-apiserver-arg"`
	}{
		Endpoint: strings.Join(clientURLs(c, nil), ","),
		CAFile:   k3sDir + "/" + KubeCA,
		CertFile: k3sDir + "/apiserver-etcd-client.pem",
		KeyFile:  k3sDir + "/apiserver-etcd-client-key.pem",
	}
	for _, a := range KubeEtcdArgs {
		doc.Args = append(doc.Args, a[0]+"="+a[1])
	}
	head := fmt.Sprintf(`# k3s and RKE2: the etcd cluster %s as the datastore, written by etcdimg.
# Copy the files beside this one into %s (the key 0600) and merge these
# keys into /etc/rancher/k3s/config.yaml (or /etc/rancher/rke2/config.yaml).
# The certificate's etcd user may use /registry/ only, which is what the
# API server needs (proven with a real kube-apiserver); these settings
# themselves are not exercised against k3s or RKE2 here.
`, c.Name, k3sDir)
	return yamlDoc(head, doc)
}

func yamlDoc(head string, doc any) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(head)
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("render: encode: %w", err)
	}
	enc.Close()
	return b.Bytes(), nil
}
