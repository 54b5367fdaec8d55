// Package images owns the image store: it turns an OCI image reference into a
// ready, read-only root disk that a VM can boot from, and remembers which
// names point at which disks.
//
// # What it does
//
//   - Pull: go-containerregistry resolves the reference (Docker-style
//     normalization, linux/amd64 picked from an index, credentials from an
//     authn.Keychain). A pinned reference (name@sha256:…) is verified against
//     the manifest bytes. Plain HTTP is allowed only for loopback registries
//     and the configured insecure list; a guarding RoundTripper refuses any
//     other http:// request, because go-containerregistry on its own also
//     falls back to HTTP for RFC 1918 addresses.
//   - Reach: a pull is a request the daemon makes on a client's behalf, to
//     any URL the client names (and any the registry redirects to), so it
//     connects only where the registry policy allows (netpolicy.go): public
//     addresses by default, loopback/private/link-local only when listed.
//     The check is made in the dialer on the IP actually dialed (one DNS
//     lookup, no rebinding window), for registries, token services and blob
//     redirects alike. Error bodies are stripped to registry error codes
//     and short messages before anything can quote them, so a failed pull
//     cannot be used to read what another service answered.
//   - Caps (limits.go): an image may cost only so much, whoever sent it.
//     Manifest size, layer count and the config's declared size are checked
//     before any blob is fetched; unpacked bytes are counted while layers
//     stream (decompressed tar and file bytes written), so a gzip bomb stops
//     at the cap. The error names the cap and the setting that raises it.
//   - Flatten: layers are applied in order into a staging directory by our
//     own tar applier (internal/untar, shared with volumes), which honours
//     whiteouts and opaque directories, keeps modes (setuid/setgid/sticky),
//     owners, symlinks, hardlinks, device nodes, fifos, xattrs and mtimes.
//     Every filesystem operation goes through an os.Root and parents are
//     resolved by hand (symlinks followed inside the root, never out of it),
//     so a hostile layer cannot write outside the staging directory. Layer bytes are hashed while
//     they stream and checked against the layer digest.
//   - Convert: the staging tree becomes one file, rootfs.erofs or rootfs.ext4,
//     built under a temporary name and renamed into place.
//   - Store: <Dir>/disks/<algo>-<hex>/ per manifest digest holds the disk and
//     image.json (config, names, sizes, format). <Dir>/index.json maps
//     normalized names to digests and statuses and is replaced atomically.
//     Two names that resolve to the same digest share one disk; the second
//     one downloads nothing and converts nothing.
//   - Keep for export (ocicache.go, export.go): the manifest, config and
//     compressed layer blobs are kept under <Dir>/oci-cache, teed from the
//     stream a pull already hashes and kept only once the digest checks
//     out, so an image can be pushed to another registry exactly as it was
//     pulled (internal/pushes). Blobs are shared by digest and collected
//     when no image's disk needs them. Config.DisableOCICache turns it off.
//
// # Why these choices
//
// erofs is the preferred disk format: it is read-only by design (the guest
// cannot corrupt the shared image, and instances stack a writable overlay on
// top), compact, and fast to build (~0.4 s for ~100 MB on our hosts, against
// ~1.1 s for mkfs.ext4 -d). The guest kernel carries erofs as a module, which
// the initrd loads. It is written uncompressed: under TCG the guest's CPU is
// emulated, so decompressing on every read would cost more than the disk
// space saves. ext4 (no journal, root owned by 0:0, sized to the content plus
// headroom) is the fallback when mkfs.erofs is not installed, or when the
// configuration asks for it. The format chosen and the reason are recorded in
// image.json and on the Image record.
//
// We use our own applier instead of mutate.Extract because Extract yields
// a single merged tar stream with no control over how it is applied, and we
// need the application itself to be safe (os.Root, no escapes) and faithful
// (owners, device nodes, hardlinks, deferred directory mtimes).
//
// Pulls run in the background (Ensure returns at once; Wait/Pull block) so the
// HTTP layer can answer 202 and let clients poll or subscribe to progress.
// Concurrent requests for the same name share one pull; concurrent pulls of
// different names that resolve to the same digest share one conversion. The
// number of pulls running at once is bounded (status "pending" while queued).
//
// After a daemon restart, records left in pending, pulling or converting are
// marked failed with an "interrupted" error rather than resumed: a restart
// should not start network and CPU work nobody asked for, and the next Ensure
// of that name starts over (failed records are always retried by Ensure).
package images
