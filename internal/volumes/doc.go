// Package volumes owns volumes: named ext4 disk images that outlive the
// instances that mount them, created empty or from a tar.gz archive, and the
// table of which instance uses which volume.
//
// # Layout
//
// <Dir>/<id>/volume.json (versioned, written atomically) describes one
// volume; <Dir>/<id>/data.ext4 is its disk, a sparse raw ext4 file of exactly
// size_gb GiB. volume.json is written last: a directory without it is a
// create that did not finish (daemon killed mid-mkfs) and New removes it,
// along with temporary files and staging trees left inside complete ones. A
// delete removes volume.json first, so a crash mid-delete leaves the same
// kind of leftover.
//
// # Empty volumes
//
// The disk is truncated to size (sparse, so a 1 TB volume costs almost
// nothing until the guest writes) and formatted with mkfs.ext4 with lazy
// inode-table and journal init (a whole create: ~25 ms for 1 GiB, ~45 ms
// for 100 GiB, ~60 ms for 1 TiB on our hosts, BenchmarkCreateEmpty), a journal (the guest writes to it and may be killed), no reserved
// blocks, root directory 0755 owned by 0:0. Free disk space is not checked:
// like instance overlays, sparse volumes may oversubscribe the host's disk;
// a guest writing past what the host has left gets I/O errors.
//
// # From an archive
//
// The tar.gz body streams through gzip into the shared tar applier
// (internal/untar) in Strict mode into a staging directory inside the
// volume's own directory, then `mkfs.ext4 -d` packs the tree into the disk,
// keeping modes, owners, mtimes, symlinks and hardlinks. size_gb is a hard
// cap enforced while the bytes stream: the compressed bytes, the
// decompressed tar stream and the file bytes written each stop at size_gb
// GiB, so a gzip bomb is cut at the cap (1 GiB of zeros against a 100 MiB
// cap stops after ~0.1 s, BenchmarkGzipBomb). Strict mode refuses absolute names,
// "..", writes through symlinks, hardlinks through them, device nodes and
// fifos, each as an *ArchiveError naming the entry. Over the cap is a
// *TooLargeError naming size_gb. Any failure removes the staging tree and
// the volume's directory: a failed create leaves nothing.
//
// # Attachments
//
// The instance metadata is the source of truth for what an instance mounts;
// the store's attachments are the cross-instance lock table (one writer, or
// any number of readers), persisted with the volume so the rule holds across
// restarts and reconciled against the instances at daemon start
// (Reconcile). A volume with attachments is never deleted (ErrInUse).
// A writer killed without unmounting leaves committed data in the ext4
// journal, which a guest mounting the volume read-only from a read-only
// disk cannot replay: the first read-only attachment replays it on the host
// (e2fsck -E journal_only, a no-op on a clean filesystem).
package volumes
