"""Which etcd release runs on a controller, and which of its tools does what there.

Asked, not assumed: ``etcd --version`` on the node. The differences hardway depends on:

- snapshot restore/status: ``etcdctl`` on 3.4; ``etcdutl`` from 3.5 (etcdctl's form is deprecated
  there, and removed in 3.6). ``snapshot save`` stays in etcdctl (it is a client call).
- joining a member: as a raft learner, then ``member promote``, from 3.5 (kubeadm's way); a plain
  ``member add`` on 3.4, where learners were new and hardway does not rely on them.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from hardway.errors import HardwayError
from hardway.facts import Fact, FactOutput
from hardway.paths import BIN

ETCDUTL = f"{BIN}/etcdutl"


@dataclass(frozen=True)
class EtcdRelease:
    """What the node's etcd binary says about itself, and whether etcdutl is installed beside it."""

    version: tuple[int, int, int] | None  # None: no etcd binary, or an answer hardway cannot read
    text: str = ""  # the first line, for messages
    has_etcdutl: bool = False

    @property
    def known(self) -> bool:
        return self.version is not None

    @property
    def learners(self) -> bool:
        """Join new members as learners (then promote)?"""
        return self.version is not None and self.version >= (3, 5, 0)

    def snapshot_tool(self, node: str) -> str:
        """The binary for ``snapshot restore`` / ``snapshot status`` on this release (a path on the node)."""
        if self.version is None:
            raise HardwayError(f"{node}: cannot tell which etcd release runs there ({self.text or 'no answer'}); "
                               "run `invoke bootstrap-etcd` first")
        if self.version < (3, 5, 0):
            return f"ETCDCTL_API=3 {BIN}/etcdctl"
        if self.has_etcdutl:
            return ETCDUTL
        if self.version < (3, 6, 0):
            return f"ETCDCTL_API=3 {BIN}/etcdctl"  # deprecated in 3.5, still there
        raise HardwayError(f"{node}: etcd {self.dotted} restores snapshots only with etcdutl, which is not in "
                           f"{BIN}; add binaries.etcdutl to the inventory and run `invoke bootstrap-etcd`")

    @property
    def dotted(self) -> str:
        return ".".join(map(str, self.version)) if self.version else "unknown"


_VERSION = re.compile(r"^etcd Version:\s*v?(\d+)\.(\d+)\.(\d+)", re.M)


def parse_release(out: FactOutput) -> EtcdRelease:
    text = out.stdout
    m = _VERSION.search(text)
    first = next((line for line in text.splitlines() if line.strip()), "")
    has_etcdutl = any(line.strip() == "etcdutl: yes" for line in text.splitlines())
    if m is None:
        return EtcdRelease(None, first, has_etcdutl)
    return EtcdRelease((int(m[1]), int(m[2]), int(m[3])), first, has_etcdutl)


RELEASE: Fact[EtcdRelease] = Fact(
    "etcd_release",
    f"{BIN}/etcd --version 2>&1 | head -n 4; [ -x {shlex.quote(ETCDUTL)} ] && echo 'etcdutl: yes'; true",
    parse_release,
)
