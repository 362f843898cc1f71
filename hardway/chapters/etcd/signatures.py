"""Lines in etcd's journal that name a cause (after the failure stories in FIELD-NOTES)."""

from __future__ import annotations

from hardway.signatures import Signature

REPLACE = "`invoke etcd.replace {node}` (moves its data aside and re-adds the member)"

SIGNATURES: tuple[Signature, ...] = (
    Signature("cluster-id-mismatch", r"request cluster ID mismatch|cluster ID mismatch",
              "a member's data dir belongs to another cluster (a stale member re-added)",
              "`invoke etcd.replace {stale}` (its data-dir result says what it holds)", about_peers=True,
              needs_stale=True),
    Signature("member-count-unequal", r"member count is unequal",
              "the member started with an --initial-cluster that differs from the cluster's member list",
              REPLACE),
    Signature("already-bootstrapped", r"has already been bootstrapped",
              "the member's data dir was lost after it had joined, and it started as a new member",
              REPLACE),
    Signature("permanently-removed", r"permanently removed from the cluster",
              "the member was removed from the cluster but still runs on its old data dir", REPLACE),
    Signature("x509-san", r"x509: certificate is valid for|does not match any of DNSNames|doesn't contain any IP SANs",
              "a certificate lacks the name or address it is reached at (a SAN missing, often after an "
              "address change)",
              "`invoke rotate-certs` (reissues what the address change affects and restarts the members)"),
    Signature("no-leader", r"etcdserver: no leader|failed to send out heartbeat on time|election timeout",
              "members lose their leader: no quorum, an overloaded leader or a disk too slow for the election "
              "timeout", "see the quorum and disk-fsync results; put {data_dir} on an SSD", about_peers=True),
    Signature("slow-disk", r"sync duration of .* expected less than 1s|slow fdatasync|apply request took too long",
              "the disk is too slow for etcd (fdatasync); commits stall and leaders are lost",
              "put {data_dir} on an SSD (preflight and verify print the measured fdatasync p99)", latent=True),
    Signature("missing-file", r"no such file or directory",
              "a file the unit references is missing on the node",
              "run `invoke bootstrap-etcd` to push the missing file"),
    Signature("broken-unit", r"Missing '='|Unknown key '--|Ignoring unknown escape sequences",
              "the unit file has a broken line continuation (a hand edit or a mangled heredoc)",
              "run `invoke bootstrap-etcd` to push the rendered unit again; do not hand-edit continuations"),
    Signature("exec-failed", r"status=203/EXEC",
              "systemd could not execute the etcd binary: missing, not executable or the wrong architecture",
              "run `invoke bootstrap-etcd`: preflight checks the binary's architecture and pushes it"),
)
