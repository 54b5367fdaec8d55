// Package guestproc owns how a process is started inside an instance's root
// filesystem from the guest init: resolving paths the way a chroot sees them,
// resolving the user against the image's /etc/passwd and /etc/group, looking
// up argv[0] on PATH, building the environment, and reaping children.
//
// Why a package of its own: the init's main program and every agent exec go
// through exactly the same steps, and both run in PID 1 while the root is
// only a chroot target (the init stays outside it as supervisor). Keeping
// these steps here, free of any PID-1 side effects, lets the init and the
// agent share them and lets them be unit-tested against a temp directory
// standing in for the root.
//
// The guest has no libc, so user lookup parses the image's files directly,
// with the semantics Docker/runc give to "name", "uid", "uid:gid" and
// "name:group". Paths are resolved with chroot semantics (absolute symlinks
// are re-rooted) because images routinely contain absolute symlinks such as
// /bin/sh -> /bin/busybox.
package guestproc
