"""Stand-in runtime, part 2: what the stand-in apiserver checks in the files beyond certificates: the
encryption config (providers, key sizes), the audit policy and its log, the aggregation layer's files.

Inlined by ``hardway.standins`` after ``common.py``; lines ending in "# inlined" are dropped there.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
import time

from hardway.standins.runtime.common import (  # inlined
    Fatal,  # inlined
    _read,  # inlined
    ca_bundle,  # inlined
    cert_pair,  # inlined
    check,  # inlined
    common_name,  # inlined
    describe,  # inlined
    load_yaml,  # inlined
    signed_by,  # inlined
    warn,  # inlined
)  # inlined

ENCRYPTION_KEY_BYTES = {"aescbc": (16, 24, 32), "aesgcm": (16, 24, 32), "secretbox": (32,)}


def encryption_config(data: bytes, label: str) -> str:
    doc = load_yaml(data, label)
    if not isinstance(doc, dict) or doc.get("kind") != "EncryptionConfiguration" or \
            doc.get("apiVersion") != "apiserver.config.k8s.io/v1":
        raise Fatal(f"{label}: not an EncryptionConfiguration (apiserver.config.k8s.io/v1)")
    seen = []
    for i, res in enumerate(doc.get("resources") or []):
        if not res.get("resources") or not res.get("providers"):
            raise Fatal(f"{label}: resources[{i}] needs resources and providers")
        for j, provider in enumerate(res["providers"]):
            if not isinstance(provider, dict) or len(provider) != 1:
                raise Fatal(f"{label}: resources[{i}].providers[{j}] must name exactly one provider")
            (name, conf), = provider.items()
            if name not in ("identity", "kms", *ENCRYPTION_KEY_BYTES):
                raise Fatal(f"{label}: resources[{i}].providers[{j}]: unknown provider {name!r}")
            for k, key in enumerate((conf or {}).get("keys") or [] if name in ENCRYPTION_KEY_BYTES else []):
                try:
                    size = len(base64.b64decode(str(key.get("secret", "")), validate=True))
                except ValueError:
                    size = -1
                if not key.get("name") or size not in ENCRYPTION_KEY_BYTES[name]:
                    raise Fatal(f"{label}: resources[{i}].providers[{j}].{name}.keys[{k}]: needs a name and a "
                                f"base64 secret of {' or '.join(map(str, ENCRYPTION_KEY_BYTES[name]))} bytes")
            seen.append(name)
    if not seen:
        raise Fatal(f"{label}: no resources configured")
    return f"EncryptionConfiguration, providers {', '.join(dict.fromkeys(seen))}; every key well formed"


AUDIT_LEVELS = ("None", "Metadata", "Request", "RequestResponse")


def audit_policy(data: bytes, label: str) -> str:
    doc = load_yaml(data, label)
    if not isinstance(doc, dict) or doc.get("kind") != "Policy" or doc.get("apiVersion") != "audit.k8s.io/v1":
        raise Fatal(f"{label}: not an audit Policy (audit.k8s.io/v1)")
    rules = doc.get("rules")
    if not isinstance(rules, list) or not rules:
        raise Fatal(f"{label}: a Policy needs rules (none: nothing is logged)")
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict) or rule.get("level") not in AUDIT_LEVELS:
            raise Fatal(f"{label}: rules[{i}].level must be one of {', '.join(AUDIT_LEVELS)}")
    return f"audit Policy, {len(rules)} rule(s); every level known"


class AuditLog:
    """Appends one JSON event per request, as the apiserver's log backend does (level from the
    policy's last rule that matches every request: the stand-in serves only non-resource paths)."""

    def __init__(self, run) -> None:
        self.path = run.get("audit-log-path")
        doc = load_yaml(_read(run.get("audit-policy-file"), "--audit-policy-file"), "--audit-policy-file")
        catch_all = [r for r in doc["rules"] if set(r) == {"level"}]
        self.level = catch_all[0]["level"] if catch_all else "None"
        self.lock = threading.Lock()
        if self.path != "-":
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)  # as the real one (lumberjack) does
            with open(self.path, "a", encoding="utf-8"):
                pass
        check(f"--audit-log-path={self.path}: writable; level {self.level} for the paths the stand-in serves")

    def __call__(self, handler, status: int) -> None:
        if self.level == "None":
            return
        cert = handler.connection.getpeercert() if hasattr(handler.connection, "getpeercert") else None
        user = next((v for rdn in (cert or {}).get("subject", ()) for k, v in rdn if k == "commonName"), "")
        event = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": self.level, "stage": "ResponseComplete",
                 "requestURI": handler.path, "verb": "get", "user": {"username": user or "system:anonymous"},
                 "sourceIPs": [handler.client_address[0]], "responseStatus": {"code": status},
                 "stageTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        line = json.dumps(event) + "\n"
        with self.lock:
            if self.path == "-":
                sys.stdout.write(line)
            else:
                with open(self.path, "a", encoding="utf-8") as out:
                    out.write(line)


def check_aggregation(run) -> None:
    """The aggregation layer's files agree with each other (extension apiservers would refuse otherwise)."""
    ca_path, cert_path = run.get("requestheader-client-ca-file"), run.get("proxy-client-cert-file")
    if not ca_path and not cert_path:
        return
    if bool(ca_path) != bool(cert_path):
        given = "--requestheader-client-ca-file" if ca_path else "--proxy-client-cert-file"
        warn(f"{given} is given alone: extension apiservers (metrics-server) cannot authenticate the proxy")
        return
    cas = ca_bundle(_read(ca_path, "--requestheader-client-ca-file"), "--requestheader-client-ca-file")
    cert = cert_pair(cert_path, run.get("proxy-client-key-file"), "--proxy-client-cert-file",
                     "--proxy-client-key-file")
    if not signed_by(cert, cas):
        raise Fatal(f"--proxy-client-cert-file={cert_path} ({describe(cert)}) is not signed by "
                    f"--requestheader-client-ca-file={ca_path}: extension apiservers would refuse every proxied "
                    "request")
    names = [n for v in run.values.get("requestheader-allowed-names", []) for n in v.split(",") if n]
    cn = common_name(cert)
    if names and cn not in names:
        raise Fatal(f"--proxy-client-cert-file={cert_path}: CN {cn!r} is not in --requestheader-allowed-names="
                    f"{','.join(names)}")
    client_ca = run.get("client-ca-file")
    if client_ca and any(c.subject == ca.subject for c in ca_bundle(_read(client_ca, "--client-ca-file"), client_ca)
                         for ca in cas):
        warn("--requestheader-client-ca-file is the --client-ca-file CA: any client certificate of the cluster "
             "could pose as the front proxy (upstream: give it a CA of its own)")
    check(f"aggregation: --proxy-client-cert-file ({describe(cert)}) signed by --requestheader-client-ca-file, "
          f"CN in --requestheader-allowed-names")


