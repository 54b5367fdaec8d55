package podmap

import (
	"fmt"
	"path"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

const (
	// DefaultEmptyDirSize is an emptyDir's size when neither its sizeLimit
	// nor Options.EmptyDirSize says.
	DefaultEmptyDirSize = 1 << 30
	// defaultFileMode is Kubernetes' defaultMode of configMap, secret,
	// downwardAPI and projected volumes (0644).
	defaultFileMode = 0o644
	// defaultTokenExpiration is used for a serviceAccountToken projection
	// without expirationSeconds: 3607 s is what the ServiceAccount admission
	// plugin asks for, and the apiserver extends such tokens (to a year by
	// default). The token is written once at create, never rotated, so the
	// extended one is the useful default.
	defaultTokenExpiration = 3607
)

// volumes builds one Volume per mount of the container, in mount order.
// Unmounted pod volumes are ignored; unsupported types and paths were
// refused by the rules table.
func volumes(o *objects, pod *corev1.Pod, opts Options, sh shape) ([]Volume, error) {
	var out []Volume
	for i, m := range pod.Spec.Containers[0].VolumeMounts {
		if isDevShm(pod, m) {
			continue // warned by the rules table
		}
		v := volumeByName(pod, m.Name)
		if v == nil {
			return nil, &UnsupportedError{Field: fmt.Sprintf("%s.volumeMounts[%d].name", ctr, i), Reason: fmt.Sprintf("no volume %q in spec.volumes", m.Name)}
		}
		field := fmt.Sprintf("spec.volumes[%d]", indexOfVolume(pod, m.Name))
		vol := Volume{Name: v.Name, Mount: Mount{Path: path.Clean(m.MountPath), ReadOnly: true}}
		if ed := v.EmptyDir; ed != nil {
			vol.SizeBytes = orDefault(opts.EmptyDirSize, DefaultEmptyDirSize)
			if ed.SizeLimit != nil && !ed.SizeLimit.IsZero() {
				vol.SizeBytes = ed.SizeLimit.Value()
			}
			vol.Mount.ReadOnly = m.ReadOnly
			out = append(out, vol)
			continue
		}
		files, err := volumeFiles(o, pod, opts, sh, field, v)
		if err != nil {
			return nil, err
		}
		vol.Files, vol.SizeBytes = files, filesSize(files)
		out = append(out, vol)
	}
	return out, nil
}

func indexOfVolume(pod *corev1.Pod, name string) int {
	for i, v := range pod.Spec.Volumes {
		if v.Name == name {
			return i
		}
	}
	return -1
}

// filesSize is the volume size for files: their total with room for the
// filesystem, rounded up to GiB, at least 1 GiB (hypemand's smallest
// volume).
func filesSize(files []File) int64 {
	var total int64
	for _, f := range files {
		total += int64(len(f.Data)) + 4096 // a block per file at least
	}
	return max(roundUp(total+total/8, gib), gib)
}

// fileSet collects a volume's files; a later path replaces an earlier one
// (as projected sources overwrite each other in kubelet's payload).
type fileSet struct {
	byPath map[string]File
}

func (fs *fileSet) add(field, p string, mode *int32, defMode int32, data []byte) error {
	clean := path.Clean(p)
	if p == "" || path.IsAbs(p) || clean == ".." || strings.HasPrefix(clean, "../") || clean == "." {
		return &UnsupportedError{Field: field, Reason: fmt.Sprintf("path %q must be relative and stay inside the volume", p)}
	}
	m := defMode
	if mode != nil {
		m = *mode
	}
	fs.byPath[clean] = File{Path: clean, Mode: int64(m) & 0o777, Data: data}
	return nil
}

func (fs *fileSet) list() []File {
	out := make([]File, 0, len(fs.byPath))
	for _, f := range fs.byPath {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// volumeFiles lays out a configMap, secret, downwardAPI or projected volume
// as kubelet does at the mount root: each key (or item path) a file,
// defaultMode/mode as permissions (0644 by default). Never nil: an empty
// list is an empty read-only volume (a missing optional source).
func volumeFiles(o *objects, pod *corev1.Pod, opts Options, sh shape, field string, v *corev1.Volume) ([]File, error) {
	fs := &fileSet{byPath: map[string]File{}}
	mode := func(m *int32) int32 {
		if m != nil {
			return *m
		}
		return defaultFileMode
	}
	var err error
	switch {
	case v.ConfigMap != nil:
		s := v.ConfigMap
		err = configMapFiles(o, fs, field+".configMap", s.Name, s.Items, s.Optional, mode(s.DefaultMode))
	case v.Secret != nil:
		s := v.Secret
		err = secretFiles(o, fs, field+".secret", s.SecretName, s.Items, s.Optional, mode(s.DefaultMode))
	case v.DownwardAPI != nil:
		err = downwardFiles(pod, opts, sh, fs, field+".downwardAPI", v.DownwardAPI.Items, mode(v.DownwardAPI.DefaultMode))
	case v.Projected != nil:
		def := mode(v.Projected.DefaultMode)
		for j, src := range v.Projected.Sources {
			f := fmt.Sprintf("%s.projected.sources[%d]", field, j)
			switch {
			case src.ConfigMap != nil:
				err = configMapFiles(o, fs, f+".configMap", src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional, def)
			case src.Secret != nil:
				err = secretFiles(o, fs, f+".secret", src.Secret.Name, src.Secret.Items, src.Secret.Optional, def)
			case src.DownwardAPI != nil:
				err = downwardFiles(pod, opts, sh, fs, f+".downwardAPI", src.DownwardAPI.Items, def)
			case src.ServiceAccountToken != nil:
				err = tokenFile(o, pod, fs, f+".serviceAccountToken", src.ServiceAccountToken, def)
			}
			if err != nil {
				return nil, err
			}
		}
	}
	if err != nil {
		return nil, err
	}
	return fs.list(), nil
}

func configMapFiles(o *objects, fs *fileSet, field, name string, items []corev1.KeyToPath, optional *bool, def int32) error {
	cm, err := o.configMap(field, name, optional)
	if err != nil || cm == nil {
		return err
	}
	data := make(map[string][]byte, len(cm.Data)+len(cm.BinaryData))
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return keyFiles(fs, field, "configmap", o.ns, name, data, items, optional, def)
}

func secretFiles(o *objects, fs *fileSet, field, name string, items []corev1.KeyToPath, optional *bool, def int32) error {
	s, err := o.secret(field, name, optional)
	if err != nil || s == nil {
		return err
	}
	return keyFiles(fs, field, "secret", o.ns, name, s.Data, items, optional, def)
}

// keyFiles writes every key (no items) or the listed items; a listed key
// the object lacks is a ConfigError unless the source is optional.
func keyFiles(fs *fileSet, field, kind, ns, name string, data map[string][]byte, items []corev1.KeyToPath, optional *bool, def int32) error {
	if len(items) == 0 {
		for _, k := range sortedKeys(data) {
			if err := fs.add(field, k, nil, def, data[k]); err != nil {
				return err
			}
		}
		return nil
	}
	for i, it := range items {
		d, ok := data[it.Key]
		if !ok {
			if err := missingKey(fmt.Sprintf("%s.items[%d]", field, i), kind, ns, name, it.Key, optional); err != nil {
				return err
			}
			continue
		}
		if err := fs.add(fmt.Sprintf("%s.items[%d].path", field, i), it.Path, it.Mode, def, d); err != nil {
			return err
		}
	}
	return nil
}

func downwardFiles(pod *corev1.Pod, opts Options, sh shape, fs *fileSet, field string, items []corev1.DownwardAPIVolumeFile, def int32) error {
	for i, it := range items {
		f := fmt.Sprintf("%s.items[%d]", field, i)
		var val string
		var err error
		switch {
		case it.FieldRef != nil:
			val, err = fieldValue(pod, opts, f+".fieldRef", it.FieldRef.FieldPath, false)
		case it.ResourceFieldRef != nil:
			val, err = resourceValue(pod, sh, f+".resourceFieldRef", it.ResourceFieldRef)
		default:
			err = &UnsupportedError{Field: f, Reason: "needs fieldRef or resourceFieldRef"}
		}
		if err != nil {
			return err
		}
		if err := fs.add(f+".path", it.Path, it.Mode, def, []byte(val)); err != nil {
			return err
		}
	}
	return nil
}

func tokenFile(o *objects, pod *corev1.Pod, fs *fileSet, field string, src *corev1.ServiceAccountTokenProjection, def int32) error {
	exp := int64(defaultTokenExpiration)
	if src.ExpirationSeconds != nil {
		exp = *src.ExpirationSeconds
	}
	tok, err := o.r.ServiceAccountToken(o.ctx, pod, src.Audience, exp)
	if err != nil {
		return fmt.Errorf("%s: request token for service account %q: %w", field, pod.Spec.ServiceAccountName, err)
	}
	return fs.add(field+".path", src.Path, nil, def, []byte(tok))
}
