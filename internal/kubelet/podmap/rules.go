package podmap

import (
	"fmt"
	"path"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"hypeman/internal/guest/guestconfig"
)

// verdict is what a rule does with a pod that sets its field.
type verdict int

const (
	// refuse: the pod cannot run as asked; Translate returns *UnsupportedError.
	refuse verdict = iota
	// warn: the pod runs, the field is not enforced; Plan.Warnings says so.
	warn
)

// rule is one row of the field table. find returns the concrete field paths
// of pod that the rule applies to (nil: none). Rules run in table order, on a
// pod that has exactly one container (the first rule guarantees it).
type rule struct {
	field   string // the field as the README table names it
	verdict verdict
	why     string
	find    func(p *corev1.Pod) []string
}

const (
	ctr = "spec.containers[0]"
	// probeRow names the probe that maps (mappedProbe) in the table.
	probeRow   = "livenessProbe (or a mapped readinessProbe):"
	oneVMWhy   = "a hypeman pod runs one container per VM"
	notEnforce = "not enforced on hypeman"
)

// rules is the table of pod fields that do not map one to one (see the
// package doc for the same table in prose; TestRulesDocumented keeps them
// in step). Fields mapped by Translate (image, command, args, workingDir,
// env, envFrom, resources, restartPolicy, terminationGracePeriodSeconds,
// livenessProbe, readinessProbe without a livenessProbe,
// emptyDir/configMap/secret/downwardAPI/projected volumes) are not here,
// nor scheduling fields (nodeSelector, affinity, tolerations, priority,
// topologySpreadConstraints, schedulingGates, runtimeClassName), which
// kube-scheduler has already used.
var rules = []rule{
	{"spec.containers (more than one)", refuse, oneVMWhy, func(p *corev1.Pod) []string {
		if len(p.Spec.Containers) == 0 {
			return []string{"spec.containers"}
		}
		return indexed("spec.containers", len(p.Spec.Containers), 1)
	}},
	{"spec.initContainers", refuse, oneVMWhy, func(p *corev1.Pod) []string {
		return indexed("spec.initContainers", len(p.Spec.InitContainers), 0)
	}},
	{"spec.ephemeralContainers", refuse, oneVMWhy, func(p *corev1.Pod) []string {
		return indexed("spec.ephemeralContainers", len(p.Spec.EphemeralContainers), 0)
	}},
	{"spec.hostNetwork", refuse, "a VM has its own network stack and cannot share the host's", flag(func(p *corev1.Pod) bool { return p.Spec.HostNetwork }, "spec.hostNetwork")},
	{"spec.hostPID", refuse, "a VM has its own kernel and cannot share the host's process namespace", flag(func(p *corev1.Pod) bool { return p.Spec.HostPID }, "spec.hostPID")},
	{"spec.hostIPC", refuse, "a VM has its own kernel and cannot share the host's IPC namespace", flag(func(p *corev1.Pod) bool { return p.Spec.HostIPC }, "spec.hostIPC")},
	{"spec.os.name (not linux)", refuse, "hypeman runs Linux guests only", flag(func(p *corev1.Pod) bool { return p.Spec.OS != nil && p.Spec.OS.Name != corev1.Linux }, "spec.os.name")},
	{"spec.resourceClaims", refuse, "hypeman has no dynamic resource allocation", func(p *corev1.Pod) []string {
		return indexed("spec.resourceClaims", len(p.Spec.ResourceClaims), 0)
	}},
	{"spec.hostAliases", refuse, "hypeman cannot add /etc/hosts entries to a guest", func(p *corev1.Pod) []string {
		return indexed("spec.hostAliases", len(p.Spec.HostAliases), 0)
	}},
	{"spec.securityContext.runAsUser, runAsGroup", refuse, "hypeman runs the image's user; a create request cannot choose another", func(p *corev1.Pod) []string {
		var out []string
		if sc := p.Spec.SecurityContext; sc != nil {
			out = appendIf(out, sc.RunAsUser != nil, "spec.securityContext.runAsUser")
			out = appendIf(out, sc.RunAsGroup != nil, "spec.securityContext.runAsGroup")
		}
		if sc := p.Spec.Containers[0].SecurityContext; sc != nil {
			out = appendIf(out, sc.RunAsUser != nil, ctr+".securityContext.runAsUser")
			out = appendIf(out, sc.RunAsGroup != nil, ctr+".securityContext.runAsGroup")
		}
		return out
	}},
	{"spec.securityContext.sysctls", refuse, "hypeman cannot set guest kernel parameters at create", func(p *corev1.Pod) []string {
		if sc := p.Spec.SecurityContext; sc != nil {
			return indexed("spec.securityContext.sysctls", len(sc.Sysctls), 0)
		}
		return nil
	}},
	{"securityContext.privileged", refuse, "a privileged container needs the host's kernel; a hypeman VM has its own", flag(func(p *corev1.Pod) bool {
		sc := p.Spec.Containers[0].SecurityContext
		return sc != nil && sc.Privileged != nil && *sc.Privileged
	}, ctr+".securityContext.privileged")},
	{"containers[0].restartPolicy, restartPolicyRules", refuse, "per-container restart rules are not supported; use the pod's restartPolicy", func(p *corev1.Pod) []string {
		c := p.Spec.Containers[0]
		return appendIf(appendIf(nil, c.RestartPolicy != nil, ctr+".restartPolicy"), len(c.RestartPolicyRules) > 0, ctr+".restartPolicyRules")
	}},
	{"containers[0].ports[].hostPort", refuse, "the instance has its own IP; hypeman does not forward host ports", func(p *corev1.Pod) []string {
		var out []string
		for i, port := range p.Spec.Containers[0].Ports {
			out = appendIf(out, port.HostPort != 0, fmt.Sprintf("%s.ports[%d].hostPort", ctr, i))
			out = appendIf(out, port.HostIP != "", fmt.Sprintf("%s.ports[%d].hostIP", ctr, i))
		}
		return out
	}},
	{"containers[0].volumeDevices", refuse, "raw block devices are not supported", func(p *corev1.Pod) []string {
		return indexed(ctr+".volumeDevices", len(p.Spec.Containers[0].VolumeDevices), 0)
	}},
	{"containers[0].volumeMounts[].subPath, subPathExpr", refuse, "hypeman mounts whole volumes only", func(p *corev1.Pod) []string {
		var out []string
		for i, m := range p.Spec.Containers[0].VolumeMounts {
			out = appendIf(out, m.SubPath != "", fmt.Sprintf("%s.volumeMounts[%d].subPath", ctr, i))
			out = appendIf(out, m.SubPathExpr != "", fmt.Sprintf("%s.volumeMounts[%d].subPathExpr", ctr, i))
		}
		return out
	}},
	{"containers[0].volumeMounts[] (a volume mounted twice)", refuse, "a hypeman volume is mounted once per instance", func(p *corev1.Pod) []string {
		seen := map[string]bool{}
		var out []string
		for i, m := range p.Spec.Containers[0].VolumeMounts {
			out = appendIf(out, seen[m.Name], fmt.Sprintf("%s.volumeMounts[%d].name", ctr, i))
			seen[m.Name] = true
		}
		return out
	}},
	{"containers[0].volumeMounts[].mountPath (/, under /proc, /sys, /dev, or nested)", refuse, "hypeman mounts volumes at separate paths outside /proc, /sys and /dev (an emptyDir at /dev/shm is dropped with a warning: the guest has its own)", func(p *corev1.Pod) []string {
		var out []string
		var paths []string
		for i, m := range p.Spec.Containers[0].VolumeMounts {
			mp := path.Clean(m.MountPath)
			if isDevShm(p, m) {
				continue
			}
			bad := guestconfig.CheckMountPath(mp) != ""
			for _, q := range paths {
				bad = bad || strings.HasPrefix(mp, q+"/") || strings.HasPrefix(q, mp+"/") || q == mp
			}
			out = appendIf(out, bad, fmt.Sprintf("%s.volumeMounts[%d].mountPath", ctr, i))
			paths = append(paths, mp)
		}
		return out
	}},
	{"spec.volumes[] other than emptyDir, configMap, secret, downwardAPI, projected (hostPath, persistentVolumeClaim, …)", refuse, "only emptyDir, configMap, secret, downwardAPI and projected volumes map to hypeman volumes", func(p *corev1.Pod) []string {
		var out []string
		for _, i := range mountedVolumes(p) {
			vs := p.Spec.Volumes[i].VolumeSource
			ok := vs.EmptyDir != nil || vs.ConfigMap != nil || vs.Secret != nil || vs.DownwardAPI != nil || vs.Projected != nil
			out = appendIf(out, !ok, fmt.Sprintf("spec.volumes[%d]", i))
		}
		return out
	}},
	{"spec.volumes[].projected.sources[].clusterTrustBundle, podCertificate", refuse, "only configMap, secret, downwardAPI and serviceAccountToken projections are supported", func(p *corev1.Pod) []string {
		var out []string
		for _, i := range mountedVolumes(p) {
			if pr := p.Spec.Volumes[i].Projected; pr != nil {
				for j, s := range pr.Sources {
					out = appendIf(out, s.ClusterTrustBundle != nil, fmt.Sprintf("spec.volumes[%d].projected.sources[%d].clusterTrustBundle", i, j))
					out = appendIf(out, s.PodCertificate != nil, fmt.Sprintf("spec.volumes[%d].projected.sources[%d].podCertificate", i, j))
				}
			}
		}
		return out
	}},
	{"containers[0].env[].valueFrom.fieldRef status.podIP, status.podIPs", refuse, "the pod IP is assigned when the instance is created, after its environment is fixed", func(p *corev1.Pod) []string {
		var out []string
		for i, e := range p.Spec.Containers[0].Env {
			if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
				fp := e.ValueFrom.FieldRef.FieldPath
				out = appendIf(out, fp == "status.podIP" || fp == "status.podIPs", fmt.Sprintf("%s.env[%d].valueFrom.fieldRef", ctr, i))
			}
		}
		return out
	}},
	{"containers[0].env[].valueFrom.fileKeyRef", refuse, "environment values from volume files are not supported", func(p *corev1.Pod) []string {
		var out []string
		for i, e := range p.Spec.Containers[0].Env {
			out = appendIf(out, e.ValueFrom != nil && e.ValueFrom.FileKeyRef != nil, fmt.Sprintf("%s.env[%d].valueFrom.fileKeyRef", ctr, i))
		}
		return out
	}},
	{"containers[0]." + probeRow + " grpc", refuse, "hypeman health checks are http, tcp or exec", func(p *corev1.Pod) []string {
		pr, f, _ := mappedProbe(&p.Spec.Containers[0])
		return appendIf(nil, pr != nil && pr.GRPC != nil, f+".grpc")
	}},
	{"containers[0]." + probeRow + " httpGet.host, httpHeaders; tcpSocket.host", refuse, "hypeman probes the instance itself, without extra headers", func(p *corev1.Pod) []string {
		pr, f, _ := mappedProbe(&p.Spec.Containers[0])
		if pr == nil {
			return nil
		}
		var out []string
		if h := pr.HTTPGet; h != nil {
			out = appendIf(out, h.Host != "", f+".httpGet.host")
			out = appendIf(out, len(h.HTTPHeaders) > 0, f+".httpGet.httpHeaders")
		}
		if t := pr.TCPSocket; t != nil {
			out = appendIf(out, t.Host != "", f+".tcpSocket.host")
		}
		return out
	}},

	// --- accepted, not enforced ---
	{"containers[0].readinessProbe (with a livenessProbe)", warn, "not run; Ready follows the liveness check (hypeman runs one check per instance)", flag(func(p *corev1.Pod) bool {
		c := p.Spec.Containers[0]
		return c.ReadinessProbe != nil && c.LivenessProbe != nil
	}, ctr+".readinessProbe")},
	{"containers[0].startupProbe", warn, "not run; the livenessProbe's initialDelaySeconds becomes hypeman's start period", flag(func(p *corev1.Pod) bool {
		return p.Spec.Containers[0].StartupProbe != nil
	}, ctr+".startupProbe")},
	{"containers[0]." + probeRow + " httpGet (status 200–399)", warn, "hypeman counts only HTTP 200 as a success (Kubernetes accepts 200-399)", func(p *corev1.Pod) []string {
		pr, f, _ := mappedProbe(&p.Spec.Containers[0])
		return appendIf(nil, pr != nil && pr.HTTPGet != nil, f+".httpGet")
	}},
	{"containers[0].livenessProbe.terminationGracePeriodSeconds", warn, "not used; a failed check stops the instance with its stop_timeout", flag(func(p *corev1.Pod) bool {
		lp := p.Spec.Containers[0].LivenessProbe
		return lp != nil && lp.TerminationGracePeriodSeconds != nil
	}, ctr+".livenessProbe.terminationGracePeriodSeconds")},
	{"containers[0].lifecycle (postStart, preStop, stopSignal)", warn, "not run; a stop sends SIGTERM, then SIGKILL after terminationGracePeriodSeconds", func(p *corev1.Pod) []string {
		lc := p.Spec.Containers[0].Lifecycle
		if lc == nil {
			return nil
		}
		return appendIf(appendIf(appendIf(nil, lc.PostStart != nil, ctr+".lifecycle.postStart"), lc.PreStop != nil, ctr+".lifecycle.preStop"), lc.StopSignal != nil, ctr+".lifecycle.stopSignal")
	}},
	{"containers[0].imagePullPolicy (Always, Never)", warn, "not followed; hypemand pulls an image it does not have and reuses the one it has", func(p *corev1.Pod) []string {
		pp := p.Spec.Containers[0].ImagePullPolicy
		return appendIf(nil, pp == corev1.PullAlways || pp == corev1.PullNever, ctr+".imagePullPolicy")
	}},
	{"containers[0].stdin, tty", warn, "no terminal is attached to the program; use kubectl exec", func(p *corev1.Pod) []string {
		c := p.Spec.Containers[0]
		return appendIf(appendIf(nil, c.Stdin, ctr+".stdin"), c.TTY, ctr+".tty")
	}},
	{"securityContext.runAsNonRoot", warn, "not verified; the image's user decides", func(p *corev1.Pod) []string {
		var out []string
		if sc := p.Spec.SecurityContext; sc != nil {
			out = appendIf(out, sc.RunAsNonRoot != nil && *sc.RunAsNonRoot, "spec.securityContext.runAsNonRoot")
		}
		if sc := p.Spec.Containers[0].SecurityContext; sc != nil {
			out = appendIf(out, sc.RunAsNonRoot != nil && *sc.RunAsNonRoot, ctr+".securityContext.runAsNonRoot")
		}
		return out
	}},
	{"securityContext: capabilities, seccompProfile, seLinuxOptions, appArmorProfile, readOnlyRootFilesystem, allowPrivilegeEscalation, procMount, fsGroup, supplementalGroups", warn, notEnforce + " (the VM boundary isolates the program instead)", func(p *corev1.Pod) []string {
		var out []string
		if sc := p.Spec.SecurityContext; sc != nil {
			const s = "spec.securityContext."
			out = appendIf(out, sc.SeccompProfile != nil, s+"seccompProfile")
			out = appendIf(out, sc.SELinuxOptions != nil, s+"seLinuxOptions")
			out = appendIf(out, sc.AppArmorProfile != nil, s+"appArmorProfile")
			out = appendIf(out, sc.FSGroup != nil, s+"fsGroup")
			out = appendIf(out, len(sc.SupplementalGroups) > 0, s+"supplementalGroups")
		}
		if sc := p.Spec.Containers[0].SecurityContext; sc != nil {
			const s = ctr + ".securityContext."
			out = appendIf(out, sc.Capabilities != nil && len(sc.Capabilities.Add) > 0, s+"capabilities.add")
			out = appendIf(out, sc.Capabilities != nil && len(sc.Capabilities.Drop) > 0, s+"capabilities.drop")
			out = appendIf(out, sc.SeccompProfile != nil, s+"seccompProfile")
			out = appendIf(out, sc.SELinuxOptions != nil, s+"seLinuxOptions")
			out = appendIf(out, sc.AppArmorProfile != nil, s+"appArmorProfile")
			out = appendIf(out, sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem, s+"readOnlyRootFilesystem")
			out = appendIf(out, sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation, s+"allowPrivilegeEscalation")
			out = appendIf(out, sc.ProcMount != nil && *sc.ProcMount != corev1.DefaultProcMount, s+"procMount")
		}
		return out
	}},
	{"spec.dnsPolicy (ClusterFirst, None), dnsConfig", warn, "not applied; the guest resolves names through hypemand's network (as dnsPolicy Default)", func(p *corev1.Pod) []string {
		dp := p.Spec.DNSPolicy
		return appendIf(appendIf(nil, dp != "" && dp != corev1.DNSDefault, "spec.dnsPolicy"), p.Spec.DNSConfig != nil, "spec.dnsConfig")
	}},
	{"spec.enableServiceLinks", warn, "service environment variables (KUBERNETES_SERVICE_HOST, …) are not injected; set it to false to silence this", flag(func(p *corev1.Pod) bool {
		return p.Spec.EnableServiceLinks == nil || *p.Spec.EnableServiceLinks
	}, "spec.enableServiceLinks")},
	{"spec.hostname, subdomain, setHostnameAsFQDN", warn, "not applied; hypeman names the guest", func(p *corev1.Pod) []string {
		s := p.Spec
		return appendIf(appendIf(appendIf(nil, s.Hostname != "", "spec.hostname"), s.Subdomain != "", "spec.subdomain"), s.SetHostnameAsFQDN != nil && *s.SetHostnameAsFQDN, "spec.setHostnameAsFQDN")
	}},
	{"spec.activeDeadlineSeconds", warn, notEnforce, flag(func(p *corev1.Pod) bool { return p.Spec.ActiveDeadlineSeconds != nil }, "spec.activeDeadlineSeconds")},
	{"spec.volumes[].emptyDir.medium Memory", warn, "not RAM on hypeman; the volume is a disk", func(p *corev1.Pod) []string {
		var out []string
		for _, i := range mountedVolumes(p) {
			ed := p.Spec.Volumes[i].EmptyDir
			out = appendIf(out, ed != nil && ed.Medium == corev1.StorageMediumMemory && !isDevShmVolume(p, p.Spec.Volumes[i].Name), fmt.Sprintf("spec.volumes[%d].emptyDir.medium", i))
		}
		return out
	}},
	{"containers[0].volumeMounts[] emptyDir at /dev/shm", warn, "not mounted; the guest has its own /dev/shm", func(p *corev1.Pod) []string {
		var out []string
		for i, m := range p.Spec.Containers[0].VolumeMounts {
			out = appendIf(out, isDevShm(p, m), fmt.Sprintf("%s.volumeMounts[%d]", ctr, i))
		}
		return out
	}},
	{"spec.volumes[].projected.sources[].serviceAccountToken.expirationSeconds (other than 3607)", warn, "the token is written once at create and not rotated, so it stops working when it expires (3607 s tokens are extended by the apiserver)", func(p *corev1.Pod) []string {
		var out []string
		for _, i := range mountedVolumes(p) {
			if pr := p.Spec.Volumes[i].Projected; pr != nil {
				for j, s := range pr.Sources {
					t := s.ServiceAccountToken
					out = appendIf(out, t != nil && t.ExpirationSeconds != nil && *t.ExpirationSeconds != defaultTokenExpiration, fmt.Sprintf("spec.volumes[%d].projected.sources[%d].serviceAccountToken.expirationSeconds", i, j))
				}
			}
		}
		return out
	}},
	{"containers[0].volumeMounts[].mountPropagation", warn, "not applied; guest mounts are private", func(p *corev1.Pod) []string {
		var out []string
		for i, m := range p.Spec.Containers[0].VolumeMounts {
			mp := m.MountPropagation
			out = appendIf(out, mp != nil && *mp != corev1.MountPropagationNone, fmt.Sprintf("%s.volumeMounts[%d].mountPropagation", ctr, i))
		}
		return out
	}},
}

// checkRules applies the table: the first refused field is the error,
// every warned field one warning ("<field>: <why>").
func checkRules(p *corev1.Pod) (warnings []string, err error) {
	for _, r := range rules {
		hits := r.find(p)
		if len(hits) == 0 {
			continue
		}
		if r.verdict == refuse {
			return nil, &UnsupportedError{Field: hits[0], Reason: r.why}
		}
		for _, h := range hits {
			warnings = append(warnings, h+": "+r.why)
		}
	}
	return warnings, nil
}

func flag(set func(p *corev1.Pod) bool, field string) func(p *corev1.Pod) []string {
	return func(p *corev1.Pod) []string { return appendIf(nil, set(p), field) }
}

func appendIf(out []string, cond bool, field string) []string {
	if cond {
		return append(out, field)
	}
	return out
}

// indexed names prefix[from] .. prefix[n-1].
func indexed(prefix string, n, from int) []string {
	var out []string
	for i := from; i < n; i++ {
		out = append(out, fmt.Sprintf("%s[%d]", prefix, i))
	}
	return out
}

// mountedVolumes returns the indexes of spec.volumes the container mounts
// (the others are ignored: nothing would see them).
func mountedVolumes(p *corev1.Pod) []int {
	mounted := map[string]bool{}
	for _, m := range p.Spec.Containers[0].VolumeMounts {
		mounted[m.Name] = true
	}
	var out []int
	for i, v := range p.Spec.Volumes {
		if mounted[v.Name] {
			out = append(out, i)
		}
	}
	return out
}

func volumeByName(p *corev1.Pod, name string) *corev1.Volume {
	for i := range p.Spec.Volumes {
		if p.Spec.Volumes[i].Name == name {
			return &p.Spec.Volumes[i]
		}
	}
	return nil
}

// isDevShm reports the common "emptyDir at /dev/shm" mount, which the
// guest's own /dev/shm already provides.
func isDevShm(p *corev1.Pod, m corev1.VolumeMount) bool {
	v := volumeByName(p, m.Name)
	return v != nil && v.EmptyDir != nil && path.Clean(m.MountPath) == "/dev/shm"
}

func isDevShmVolume(p *corev1.Pod, name string) bool {
	for _, m := range p.Spec.Containers[0].VolumeMounts {
		if m.Name == name && isDevShm(p, m) {
			return true
		}
	}
	return false
}
