// Package render turns a validated spec into an output directory, and
// owns every later change to what that directory holds on the host:
//
//   - Run: the spec itself, the PKI (package pki), one Ignition config
//     and its Butane source per member (package ignition), the cluster's
//     record (ClusterRecord: its ID and token, provisional until a live
//     cluster confirms it), etcdctl.env, the Prometheus scrape config and
//     alert rules (etcd's mixin in mixin.go, the appliance's in
//     alerts.go), the Grafana dashboard (dashboard.go), and the
//     Kubernetes API server's files;
//   - clients: AddClient, ReissueClients, RetireClient (a pair per
//     application client, moved aside, never deleted);
//   - CA rotation: NextRotationStep and RotationStep.Write, one phase at a
//     time (trust, switch, drop), and RetireLeaves for `rotate certs`;
//   - the reports the CLI prints for each (report.go).
//
// Everything is computed and validated in memory first; only then is the
// directory written, through outdir. A run that fails writes nothing. It
// never talks to a cluster: callers (cmd/etcdimg, cluster) do, and hand
// render what they learned.
//
// A render from the operator's spec:
//
//	dir := outdir.Layout("etcdimg-out")
//	c, from, err := render.LoadSpec(render.Source{ConfigPath: "etcdimg.yaml"}, dir)
//	if err != nil {
//		return err
//	}
//	res, err := render.Run(c, dir) // the PKI is reused when it exists
//	if err != nil {
//		return err
//	}
//	res.Report(os.Stdout, c, dir, from)
package render
