"""The checks hardway adds beyond the tutorial's control plane, each broken on purpose: the aggregation
layer's flags and files (front-proxy CA, client, allowed names, routing), the audit log being written,
and pki.check listing the front-proxy CA and client. The lab runs them against real nodes in
tests/test_encryption_rotation_lab.py (verify after the rotation)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

from hardway import pki, plan
from hardway.chapters.control_plane import extras
from hardway.chapters.control_plane import files as cp_files
from hardway.checks import FAIL, OK, WARN

ROOT = Path(__file__).resolve().parent.parent


def planned(inv, state, node):
    return plan.node_files(inv, node, state)


def swap(files, path, data: bytes):
    return [dataclasses.replace(f, content=data) if f.path == path else f for f in files]


def test_the_aggregation_check_passes_as_planned_and_fails_on_each_mismatch(inv, state) -> None:
    node = inv.controllers[0]
    files = planned(inv, state, node)
    ok = extras.judge_aggregation(inv, node, files)
    assert ok.status == OK and "CN=front-proxy-client" in ok.detail and "--enable-aggregator-routing" in ok.detail
    # a proxy client the cluster CA signed (the admin certificate): extension apiservers would refuse it
    broken = swap(files, cp_files.FRONT_PROXY_CERT, state.cert("admin").read_bytes())
    r = extras.judge_aggregation(inv, node, broken)
    assert r.status == FAIL and "is not signed by --requestheader-client-ca-file" in r.detail and "invoke pki" in r.hint
    # the request-header CA is the cluster CA: refused even when the client is signed by it
    reused = swap(swap(files, cp_files.FRONT_PROXY_CA, state.cert("ca").read_bytes()), cp_files.FRONT_PROXY_CERT,
                  state.cert("admin").read_bytes())
    r = extras.judge_aggregation(inv, node, reused)
    assert r.status == FAIL and "is the cluster CA" in r.detail
    # a file the unit names is not planned for the node
    r = extras.judge_aggregation(inv, node, [f for f in files if f.path != cp_files.FRONT_PROXY_KEY])
    assert r.status == FAIL and cp_files.FRONT_PROXY_KEY in r.detail


def test_aggregator_routing_only_where_no_kube_proxy_runs(inv, state) -> None:
    node = inv.controllers[0]
    assert "--enable-aggregator-routing=true" in cp_files.kube_apiserver_argv(inv, node)
    both = dataclasses.replace(node, roles=(*node.roles, "worker"))
    assert both.is_worker
    assert not any(a.startswith("--enable-aggregator-routing") for a in cp_files.kube_apiserver_argv(inv, both))


def test_the_audit_check_fails_on_a_missing_log_and_warns_on_a_silent_one(inv) -> None:
    node = inv.controllers[0]
    fact = extras.audit_fact(inv)
    assert inv.audit.log_path in fact.shell
    r = extras.judge_audit(inv, node, None, True)
    assert r.status == FAIL and "is missing" in r.detail and "(stand-in)" in r.detail
    assert extras.judge_audit(inv, node, (0, 100, 110), False).status == WARN
    assert extras.judge_audit(inv, node, (512, 100, 100 + extras.FRESH_S + 1), False).status == WARN
    r = extras.judge_audit(inv, node, (512, 100, 103), False)
    assert r.status == OK and "written 3s ago" in r.detail


def test_pki_check_lists_the_front_proxy_ca_and_client(inv, state) -> None:
    table = pki.format_check_table(pki.check(inv, state))
    rows = {line.split()[0]: line for line in table.splitlines() if line.strip()}
    assert "front-proxy-ca" in rows and "front-proxy-client" in rows
    assert "front-proxy" in rows["front-proxy-client"].split("front-proxy-client", 1)[1]  # its issuer column


def test_pki_check_as_the_cli_prints_it(inv, state, tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), "pki.check", "--inventory",
                           str(ROOT / "inventory" / "sample.yaml"), "--pki-dir", str(state.root)],
                          capture_output=True, text=True, timeout=120)
    assert "front-proxy-ca" in proc.stdout and "front-proxy-client" in proc.stdout, proc.stdout + proc.stderr
