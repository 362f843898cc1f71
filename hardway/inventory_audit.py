"""The inventory's ``audit`` section: where the apiserver writes its audit log and how it rotates it.

Parsed like every other field (one line naming file, line, field and the fix); the defaults are what a
small cluster needs: 30 days, 10 files of 100 MB at most.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from hardway.yamlfields import Field, shown

_PART = re.compile(r"^[A-Za-z0-9._@+-]+$")
_NOT_UNDER = ("/proc/", "/sys/", "/dev/", "/run/", "/tmp/", "/etc/", "/usr/", "/boot/")


@dataclass(frozen=True)
class AuditSettings:
    log_path: str = "/var/log/kubernetes/audit.log"
    max_age_days: int = 30  # --audit-log-maxage
    max_backups: int = 10  # --audit-log-maxbackup
    max_size_mb: int = 100  # --audit-log-maxsize

    @property
    def log_dir(self) -> str:
        return posixpath.dirname(self.log_path)


def log_path_problem(path: str) -> str | None:
    """Why ``path`` is no place for the audit log on a controller, or None."""
    if not path.startswith("/"):
        return f"{shown(path)} must be an absolute path on the controllers, such as /var/log/kubernetes/audit.log"
    if path.endswith("/"):
        return f"{shown(path)} names a directory; name the file, such as {path}audit.log"
    parts = path.split("/")[1:]
    if "" in parts or "." in parts or ".." in parts:
        return f"{shown(path)} has an empty, '.' or '..' component; write {shown(posixpath.normpath(path))}"
    if not all(_PART.match(p) for p in parts):
        return (f"{shown(path)} has characters other than letters, digits and . _ @ + - (spaces, quotes and "
                "control characters break the unit)")
    if len(parts) < 2:
        return f"{shown(path)} is directly under /; use a directory of its own, such as /var/log/kubernetes/audit.log"
    for top in _NOT_UNDER:
        if path.startswith(top):
            return (f"{shown(path)} is under {top.rstrip('/')}, no place for a growing log; use "
                    "/var/log/kubernetes/audit.log")
    return None


def parse_audit(f: Field) -> AuditSettings:
    a = f.mapping(("log_path", "max_age_days", "max_backups", "max_size_mb")) if f.present else {}
    path_f = f.get(a, "log_path")
    path = path_f.string(AuditSettings.log_path)
    if (problem := log_path_problem(path)) is not None:
        raise path_f.fail(problem)
    return AuditSettings(
        log_path=path,
        max_age_days=f.get(a, "max_age_days").integer(AuditSettings.max_age_days, 1, 3650),
        max_backups=f.get(a, "max_backups").integer(AuditSettings.max_backups, 0, 1000),
        max_size_mb=f.get(a, "max_size_mb").integer(AuditSettings.max_size_mb, 1, 100_000),
    )
