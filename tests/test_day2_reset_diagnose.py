"""reset and diagnose over the fakes: what is removed (exactly the record), where each command runs,
every refusal, and what the diagnose bundle may never hold."""

from __future__ import annotations

import json
import re
import shlex
import tarfile

import pytest

from hardway.chapters import Context
from hardway.chapters.etcd import CHAPTER as ETCD
from hardway.chapters.etcd import cluster as etcd_cluster
from hardway.chapters.etcd.files import KEY, UNIT_PATH
from hardway.day2 import diagnose, reset
from hardway.deploy import RECORD
from hardway.errors import HardwayError
from hardway.facts import FactOutput
from hardway.remote import QUIET
from tests.day2_support import commands, ran, running
from tests.etcd_fakes import stale
from tests.fakes import FakeCluster, FakeFile, FakeNode, FakeService


def ctx_for(inv, state, cluster: FakeCluster, timeout: float = 3.0) -> Context:
    return Context(inv, state, connector=cluster.connector, progress=QUIET, timeout=timeout)


def emulate_removal(node: FakeNode) -> None:
    """The reset's file removal, as the shell would do it on the fake disk."""

    def run(cmd: str) -> str:
        for part in cmd.split("; "):
            w = shlex.split(part) if not part.startswith("o=") and not part.startswith("[") else []
            if w[:3] == ["rm", "-f", "--"]:
                node.files.pop(w[3], None)
            elif w[:3] == ["mv", "-f", "--"]:
                node.files[w[4]] = node.files.pop(w[3])
            elif w[:3] == ["rm", "-rf", "--"]:
                for p in w[3:]:
                    node.files.pop(p, None)
        return ""

    node.on(r"rm -rf -- /var/lib/hardway/staging /var/lib/hardway/deployed\.json", run)


@pytest.fixture
def deployed(lab_like, monkeypatch):
    """A running cluster whose controllers hold what bootstrap-etcd installs (and a record of it)."""
    from hardway.chapters.etcd import verify

    monkeypatch.setattr(verify, "client_auth_results", lambda inv, state, node: [])
    inv, state = lab_like
    cluster, etcd = running(inv)
    ETCD.apply(ctx_for(inv, state, cluster))
    for n in cluster.nodes.values():
        n.commands.clear()
        emulate_removal(n)
    return inv, state, cluster, etcd


def test_reset_needs_yes_but_a_dry_run_does_not(deployed) -> None:
    inv, state, cluster, _ = deployed
    with pytest.raises(HardwayError, match=r"^reset removes everything hardway deployed on controller-0 \(its data "
                                           r"dirs are moved aside\); re-run with --yes to do it, or with --dry-run"):
        reset.reset(ctx_for(inv, state, cluster), ["controller-0"])
    proc, _ = reset.reset(ctx_for(inv, state, cluster), ["controller-0"], dry_run=True)
    assert "remove the 6 files hardway deployed" in proc.describe()
    assert commands(cluster) == []


def test_every_controller_at_once_needs_all(deployed) -> None:
    inv, state, cluster, _ = deployed
    names = [c.name for c in inv.controllers]
    with pytest.raises(HardwayError, match=r"^controller-0, controller-1, controller-2 are every controller: the etcd "
                                           r"cluster and all its data go with them \(moved aside\); pass --all"):
        reset.reset(ctx_for(inv, state, cluster), names, yes=True)
    assert commands(cluster) == []


def test_a_reset_that_would_lose_quorum_is_refused(deployed) -> None:
    inv, state, cluster, _ = deployed
    cluster["controller-2"].services["etcd"].active = False
    with pytest.raises(HardwayError, match=r"^resetting controller-0 leaves 1 serving etcd member\(s\) \(controller-1\)"
                                           r" of 2: quorum lost"):
        reset.reset(ctx_for(inv, state, cluster), ["controller-0"], yes=True)
    assert commands(cluster) == []


def test_reset_removes_exactly_the_record_and_only_on_that_node(deployed) -> None:
    inv, state, cluster, etcd = deployed
    c0 = cluster["controller-0"]
    recorded = set(json.loads(c0.files[RECORD].data)["files"])
    c0.files["/etc/etcd/notes.txt"] = FakeFile(b"mine")  # not hardway's: stays
    old = etcd.member_at("controller-0")["ID"]
    reset.reset(ctx_for(inv, state, cluster), ["controller-0"], yes=True)
    # the other controllers only ran the membership change (a late-bound command once ran the file removal
    # there instead: this is the test that catches it)
    for other in ("controller-1", "controller-2"):
        for cmd in cluster[other].commands:
            assert re.search(rf"etcdctl .* member remove {old:x}$", cmd), (other, cmd)
    assert sum(len(cluster[o].commands) for o in ("controller-1", "controller-2")) == 1
    assert etcd.member_at("controller-0") is None
    assert not recorded & set(c0.files) and RECORD not in c0.files
    assert "/etc/etcd/notes.txt" in c0.files
    stop = next(c for c in c0.commands if c.startswith("systemctl disable --now etcd.service"))
    assert c0.commands.index(stop) < c0.commands.index(next(c for c in c0.commands if "rm -f --" in c))
    assert ran(cluster, "controller-0", r"^if \[ -n .*d=/var/lib/etcd\.removed-\d+; mkdir -m 0700")
    assert etcd.data["controller-0"] is None and next(iter(etcd.aside.values()))[0] == old


def test_a_data_dir_is_moved_aside_only_where_hardway_deployed_its_chapter(deployed) -> None:
    """A controller whose record holds no etcd files: its reset never moves a /var/lib/etcd hardway did not make."""
    inv, state, cluster, _ = deployed
    c0 = cluster["controller-0"]
    c0.facts.update({"deployed": ""})
    proc, _ = reset.reset(ctx_for(inv, state, cluster), ["controller-0"], yes=True)
    assert not [s for s in proc.steps if "aside" in s.what], [s.what for s in proc.steps]
    assert not [c for c in c0.commands if "removed-" in c]


def test_a_changed_file_is_moved_aside_and_an_adopted_original_goes_back(deployed) -> None:
    inv, state, cluster, _ = deployed
    c0 = cluster["controller-0"]
    c0.files[KEY].data = b"edited by hand"
    _proc, _ = reset.reset(ctx_for(inv, state, cluster), ["controller-0"], yes=True)
    wipe = next(c for c in c0.commands if "rm -f --" in c)
    assert re.search(rf"mv -f -- {KEY} {KEY}\.hardway-reset-\d+", wipe)
    assert f"rm -f -- {KEY};" not in wipe
    assert f"o=$(ls -1d -- {UNIT_PATH}.hardway-orig-* 2>/dev/null | tail -n 1); [ -z \"$o\" ] || mv -f -- \"$o\" " \
           f"{UNIT_PATH}" in wipe
    assert any(p.startswith(f"{KEY}.hardway-reset-") for p in c0.files)


def test_a_service_hardway_did_not_install_is_never_stopped(lab_like) -> None:
    inv, state = lab_like
    cluster = FakeCluster()
    w0 = cluster["worker-0"]
    w0.services["containerd"] = FakeService(True, 1)  # Debian's containerd: no record
    w0.facts.update({"deployed": ""})
    w0.on(r"^ip -[46] route flush proto 211$", "")  # hardway's routes go by their protocol number, if any
    proc, _ = reset.reset(ctx_for(inv, state, cluster), ["worker-0"], yes=True)
    assert w0.services["containerd"].active and not [c for c in w0.commands if "containerd" in c]
    assert [s.what for s in proc.steps if not s.what.startswith("undo pod-routes")] == []


def test_reset_takes_hardways_pod_routes_off_a_worker(lab_like) -> None:
    import hashlib

    from hardway.chapters import pod_routes
    from hardway.deploy import Deployed, record_bytes

    inv, state = lab_like
    cluster = FakeCluster()
    w0 = cluster["worker-0"]
    unit = b"[Service]\nType=oneshot\n"
    w0.files[pod_routes.UNIT_PATH] = FakeFile(unit)
    w0.files[RECORD] = FakeFile(record_bytes({pod_routes.UNIT_PATH: Deployed(
        hashlib.sha256(unit).hexdigest(), 0o644, "root", "root", pod_routes.NAME)}), 0o600)
    w0.on(r"^ip -[46] route flush proto 211$", "")
    emulate_removal(w0)
    reset.reset(ctx_for(inv, state, cluster), ["worker-0"], yes=True)
    assert "ip -4 route flush proto 211" in w0.commands and "ip -6 route flush proto 211" in w0.commands
    assert any(c.startswith("systemctl disable --now hardway-pod-routes.service") for c in w0.commands)
    assert pod_routes.UNIT_PATH not in w0.files and RECORD not in w0.files


def test_after_a_reset_bootstrap_joins_the_node_as_a_new_member(deployed) -> None:
    inv, state, cluster, etcd = deployed
    old = etcd.member_at("controller-0")["ID"]
    reset.reset(ctx_for(inv, state, cluster), ["controller-0"], yes=True)
    report = ETCD.apply(ctx_for(inv, state, cluster))
    new = etcd.member_at("controller-0")
    assert report.started == {"controller-0": ["etcd"]} and new["ID"] != old and new["name"] == "controller-0"
    assert etcd.serving("controller-0")


# --- diagnose ----------------------------------------------------------------------------------


def test_certificates_are_read_with_openssl_and_keys_never() -> None:
    record = ["/etc/etcd/etcd.crt", "/etc/etcd/etcd.key", "/etc/kubernetes/encryption-config.yaml",
              "/etc/kubernetes/admin.kubeconfig", "/etc/kubernetes/pki/service-accounts.key"]
    cmd = diagnose.cert_command(record)
    assert "openssl x509" in cmd and "-in /etc/etcd/etcd.crt" in cmd
    assert ".key" not in cmd and "encryption-config" not in cmd
    assert "grep -E '^ *(client-certificate|certificate-authority)-data:' /etc/kubernetes/admin.kubeconfig" in cmd
    assert "client-key" not in cmd and "cat " not in cmd


def evidence(inv, name: str, journal: str = "", active: str = "active", p99: float = 1.0,
             data: tuple[int, int] | None = None, members: list | None = None) -> diagnose.NodeEvidence:
    from hardway.facts import FactValues, UnitState

    node = inv.node(name)
    view = {f.key: None for f in etcd_cluster.facts(inv, node)}
    ev = diagnose.NodeEvidence(node, files={"journal/etcd.log": journal, "certs.txt": ""})
    ev.states = {"etcd": UnitState(active, None, "enabled")}
    import base64

    from hardway.chapters.etcd import datadir
    from tests.etcd_fakes import wal_for

    values = dict(view)
    serving = active == "active"
    values[etcd_cluster.STATE.key] = {"etcd": UnitState(active, None, "enabled")}
    values[etcd_cluster.health(inv, node).key] = (serving, "is healthy" if serving else "")
    values[etcd_cluster.status(inv, node).key] = [{"Status": {"header": {"cluster_id": 7, "member_id": data[0]},
                                                              "leader": 1}}] if serving and data else None
    values[etcd_cluster.members(inv, node).key] = {"members": members} if serving and members else None
    from hardway.chapters.etcd.tools import RELEASE, EtcdRelease

    values[RELEASE.key] = EtcdRelease((3, 4, 23))
    e, w = datadir.facts(inv)
    values[e.key] = ["member"] if data else []
    values[w.key] = base64.b64decode(base64.b64encode(wal_for(*data))) if data else None
    from hardway.chapters.etcd.preflight import fsync_p99

    values[fsync_p99(inv.etcd.data_dir).key] = p99
    ev.values = FactValues(values)
    return ev


def test_the_summary_names_the_stale_member_as_the_cause_of_every_mismatch(lab_like) -> None:
    inv, state = lab_like
    members = [{"ID": i + 1, "name": f"controller-{i}", "peerURLs": [inv.etcd_peer_url(c)]}
               for i, c in enumerate(inv.controllers)]
    mismatch = '{"level":"warn","msg":"request cluster ID mismatch"}\n' * 3
    ev = [evidence(inv, "controller-0", mismatch, "activating", data=(0xD6, 0x66)),
          evidence(inv, "controller-1", mismatch, data=(2, 7), members=members),
          evidence(inv, "controller-2", "", data=(3, 7), members=members, p99=23.5)]
    matches = diagnose.summarize(Context(inv, state), ev)
    first = matches[0]
    assert (first.node, first.where) == ("controller-0", "etcd data dir")
    assert "holds member d6 of cluster 66, not of this cluster (7" in first.what
    assert first.fix.startswith("`invoke etcd.replace controller-0`")
    echo = next(m for m in matches if m.node == "controller-1" and m.what.startswith("cluster-id-mismatch"))
    assert echo.what == "cluster-id-mismatch (3 line(s))" and "etcd.replace controller-0" in echo.fix
    assert echo.seen == "request cluster ID mismatch"
    assert any(m.node == "controller-0" and m.what == "the service is activating" for m in matches)
    disk = next(m for m in matches if m.where == "disk")
    assert disk.node == "controller-2" and disk.what == "fdatasync p99 23.5 ms"


def test_an_expiring_certificate_is_a_finding(lab_like) -> None:
    inv, state = lab_like
    ev = diagnose.NodeEvidence(inv.node("worker-0"), files={"certs.txt": "== /var/lib/kubelet/kubelet.crt\n"
                                                                          "notAfter=Jan  1 00:00:00 2020 GMT\n"})
    m = diagnose.summarize(Context(inv, state), [ev])
    assert m[0].what.startswith("/var/lib/kubelet/kubelet.crt expired") and "rotate-certs" in m[0].fix


def test_the_bundle_is_one_0600_tarball_with_a_summary(deployed, tmp_path) -> None:
    inv, state, cluster, etcd = deployed
    stale(etcd, "controller-0")
    for n in (cluster[x.name] for x in inv.nodes):
        for name in ("units/etcd.service", "status.txt", "journal/etcd.log", "certs.txt", "ports.txt",
                     "routes.txt", "resolv.conf", "etcd.txt", "disk.txt"):
            n.facts.setdefault(f"diagnose:{name}", FactOutput(f"{name} of {n.name}\n"))
    bundle = diagnose.diagnose(ctx_for(inv, state, cluster), lines=10, out=tmp_path)
    assert bundle.path.stat().st_mode & 0o777 == 0o600 and bundle.path.name.endswith(".tar.gz")
    with tarfile.open(bundle.path) as tar:
        names = tar.getnames()
        summary = tar.extractfile(next(n for n in names if n.endswith("summary.txt"))).read().decode()
    assert any(n.endswith("controller-0/journal/etcd.log") for n in names)
    assert any(n.endswith("worker-1/deployed.json") for n in names)
    assert "controller-0 etcd data dir: /var/lib/etcd holds member d622127685879b3c" in summary
    assert summary == bundle.summary_text()


def test_the_diagnose_dry_run_lists_what_each_node_would_give_and_writes_nothing(deployed, tmp_path) -> None:
    inv, state, cluster, _ = deployed
    text = diagnose.describe(ctx_for(inv, state, cluster), 50, tmp_path)
    assert "  [controller-0]" in text and "journal/etcd.log: $ journalctl -u etcd.service -n 50" in text
    assert "certs.txt: $ echo '== /etc/etcd/ca.crt'; openssl x509" in text
    assert list(tmp_path.iterdir()) == []
