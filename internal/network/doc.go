// Package network owns host-side VM networking: the choice of networking mode,
// the Linux bridge with its gateway address, outbound NAT, per-instance IP and
// MAC leases, and the TAP device each VM's virtio-net backend opens.
//
// Why it is shaped this way:
//
//   - One Manager decides the mode once (bridge when the daemon may create a
//     bridge and TAP devices, else QEMU user-mode networking) and reports why,
//     so /capabilities tells the truth and callers never probe themselves.
//   - Leases are the source of truth for addresses. They are persisted
//     atomically (leases.json) on every change because VMs outlive the daemon:
//     after a restart the same instance must get the same IP, MAC and TAP,
//     and a new instance must never get an address a running VM still uses.
//   - Names are derived, not stored choices: the TAP name is "hm" + the hex
//     of the leased IPv4 address (unique while the lease lives, 10 bytes, far
//     below IFNAMSIZ) and the MAC is a locally administered address hashed
//     from the instance ID (stable per instance).
//   - Devices are managed over netlink (vishvananda/netlink), which needs no
//     binaries and reports typed errors. NAT and the guest filters use the
//     nft CLI with one ruleset file applied as a single transaction ("add
//     table; delete table; define table"), which makes it idempotent and
//     atomic (a daemon restart replaces the table, never duplicates rules),
//     keeps every rule in our own table "inet hypeman" so nothing else on
//     the host is touched, and stays readable to an operator (`nft list
//     table inet hypeman`). A netlink nftables library would add a
//     dependency and hide exactly what is installed.
//   - Guests are isolated by default, because one tenant's VM must not be a
//     foothold on another's or on the host: every TAP is an isolated bridge
//     port (the bridge drops frames between two isolated ports, while the
//     gateway stays reachable), routing guest → gateway → other guest is
//     dropped, and guest → host is dropped except replies to connections the
//     host opened (health checks, the ingress proxy), DNS to the servers the
//     guests were given, and ingress ports published on a non-loopback
//     address (PublishPorts). Guest → outside through NAT is unchanged. The
//     daemon serves nothing to guests over the network (addresses come with
//     the config disk, the agent talks over virtio-serial), so nothing else
//     needs to be open.
//   - Per-VM bandwidth limits are traffic control on the VM's TAP, applied
//     whenever the TAP is created or re-adopted and gone with it (see
//     Bandwidth). They use the tc CLI as one batch, for the same reasons as
//     nft: readable to an operator (`tc qdisc show dev hm…`) and no extra
//     dependency; the ifb device upload shaping needs is a netlink device
//     like the TAP.
//   - Everything can run inside a named network namespace (Config.NetNS):
//     tests use it so they never touch the host's network, and operators can
//     use it for isolation. Namespace switches happen on a locked OS thread in
//     a goroutine of their own (see InNetNS), because a network namespace is a
//     per-thread property in Linux.
package network
