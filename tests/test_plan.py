"""hardway.plan: who gets what, where it lands, and what the units reference."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest
import yaml

from hardway import inventory
from hardway.chapters import REGISTRY
from hardway.chapters.control_plane import kube_apiserver_argv
from hardway.chapters.etcd.files import etcd_argv
from hardway.errors import HardwayError
from hardway.files import File
from hardway.inventory import Inventory
from hardway.plan import chapter_files, node_files
from hardway.state import PkiState, etcd_cert_name, kubelet_cert_name
from tests.systemd_dump import exec_argv

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "inventory" / "sample.yaml"


@pytest.fixture(scope="module")
def plans(inv: Inventory, state: PkiState) -> dict[str, list[File]]:
    return {n.name: node_files(inv, n.name, state) for n in inv.nodes}


def by_path(files: list[File]) -> dict[str, File]:
    return {f.path: f for f in files}


def contents(files: list[File]) -> set[bytes]:
    return {f.content for f in files if f.content is not None}


# --------------------------------------------------------------------------------------------
# Who gets what


def test_workers_never_receive_cluster_secrets_or_other_workers_keys(inv, state, plans):
    forbidden = {
        "ca.key": state.key("ca").read_bytes(),
        "service-accounts.key": state.key("service-accounts").read_bytes(),
        "encryption config": state.encryption_config.read_bytes(),
        "kube-apiserver.key": state.key("kube-apiserver").read_bytes(),
        "apiserver-kubelet-client.key": state.key("apiserver-kubelet-client").read_bytes(),
        "admin kubeconfig": state.kubeconfig("admin-local").read_bytes(),
        **{f"etcd key of {c.name}": state.key(etcd_cert_name(c)).read_bytes() for c in inv.controllers},
    }
    for w in inv.workers:
        got = contents(plans[w.name])
        others = {f"{o.name}'s {kind}": path.read_bytes() for o in inv.workers if o != w
                  for kind, path in (("key", state.key(kubelet_cert_name(o))),
                                     ("kubeconfig", state.kubeconfig(kubelet_cert_name(o))))}
        for what, data in {**forbidden, **others}.items():
            assert data not in got, f"{w.name} receives {what}"
        paths = by_path(plans[w.name])
        assert paths["/var/lib/kubelet/kubelet.key"].content == state.key(kubelet_cert_name(w)).read_bytes()
        assert paths["/var/lib/kubelet/kubeconfig"].content == state.kubeconfig(kubelet_cert_name(w)).read_bytes()
        assert paths["/var/lib/kube-proxy/kubeconfig"].content == state.kubeconfig("kube-proxy").read_bytes()
        assert paths["/var/lib/kubelet/ca.crt"].content == state.cert("ca").read_bytes()


def test_controllers_never_receive_kubelet_keys(inv, state, plans):
    for c in inv.controllers:
        got = contents(plans[c.name])
        for w in inv.workers:
            assert state.key(kubelet_cert_name(w)).read_bytes() not in got
            assert state.kubeconfig(kubelet_cert_name(w)).read_bytes() not in got
        assert not any(f.path.startswith(("/var/lib/kubelet", "/var/lib/kube-proxy")) for f in plans[c.name])


def test_each_etcd_member_receives_only_its_own_key(inv, state, plans):
    for c in inv.controllers:
        got = contents(plans[c.name])
        own = state.key(etcd_cert_name(c)).read_bytes()
        assert by_path(plans[c.name])["/etc/etcd/etcd.key"].content == own
        assert by_path(plans[c.name])["/etc/etcd/etcd.crt"].content == state.cert(etcd_cert_name(c)).read_bytes()
        for other in inv.controllers:
            if other != c:
                assert state.key(etcd_cert_name(other)).read_bytes() not in got


def test_controller_file_set(inv, plans):
    expected = {
        "/etc/etcd/ca.crt", "/etc/etcd/etcd.crt", "/etc/etcd/etcd.key", "/etc/systemd/system/etcd.service",
        "/etc/kubernetes/pki/ca.crt", "/etc/kubernetes/pki/ca.key",
        "/etc/kubernetes/pki/kube-apiserver.crt", "/etc/kubernetes/pki/kube-apiserver.key",
        "/etc/kubernetes/pki/apiserver-kubelet-client.crt", "/etc/kubernetes/pki/apiserver-kubelet-client.key",
        "/etc/kubernetes/pki/service-accounts.key", "/etc/kubernetes/pki/service-accounts.pub",
        "/etc/kubernetes/encryption-config.yaml", "/etc/kubernetes/admin.kubeconfig",
        "/etc/kubernetes/kube-controller-manager.kubeconfig", "/etc/kubernetes/kube-scheduler.kubeconfig",
        "/etc/kubernetes/config/kube-scheduler.yaml", "/etc/kubernetes/config/audit-policy.yaml",
        "/etc/systemd/system/kube-apiserver.service", "/etc/systemd/system/kube-controller-manager.service",
        "/etc/systemd/system/kube-scheduler.service", "/etc/systemd/system/hardway-pod-routes.service",
        "/etc/kubernetes/pki/etcd-ca.crt", "/etc/kubernetes/pki/apiserver-etcd-client.crt",
        "/etc/kubernetes/pki/apiserver-etcd-client.key",
        "/etc/kubernetes/pki/front-proxy-ca.crt", "/etc/kubernetes/pki/front-proxy-client.crt",
        "/etc/kubernetes/pki/front-proxy-client.key",
        # the sample names no Kubernetes binaries: the stand-ins (its etcd binaries do not exist: none)
        "/usr/local/bin/kube-apiserver", "/usr/local/bin/kube-controller-manager", "/usr/local/bin/kube-scheduler",
    }
    for c in inv.controllers:
        assert {f.path for f in plans[c.name]} == expected


def test_worker_file_set(inv, plans):
    expected = {
        "/var/lib/kubelet/ca.crt", "/var/lib/kubelet/kubelet.crt", "/var/lib/kubelet/kubelet.key",
        "/var/lib/kubelet/kubeconfig", "/var/lib/kubelet/kubelet-config.yaml",
        "/var/lib/kube-proxy/kubeconfig", "/var/lib/kube-proxy/kube-proxy-config.yaml",
        "/etc/containerd/config.toml", "/etc/cni/net.d/10-bridge.conf", "/etc/cni/net.d/99-loopback.conf",
        "/etc/systemd/system/containerd.service", "/etc/systemd/system/kubelet.service",
        "/etc/systemd/system/kube-proxy.service",
        # no kubelet/kube-proxy binaries in the sample: their stand-ins; sysctl and module files only with --fix
        "/usr/local/bin/kubelet", "/usr/local/bin/kube-proxy", "/etc/systemd/system/hardway-pod-routes.service",
    }
    for w in inv.workers:
        assert {f.path for f in plans[w.name]} == expected


def test_secret_files_are_0600_and_everything_with_key_material_is_secret(plans):
    for files in plans.values():
        for f in files:
            assert (f.mode == 0o600) == f.secret, f.path
            if f.mode == 0o755:  # a program (a stand-in's source names keys and kubeconfig fields)
                continue
            data = f.content or b""
            holds_key = b"PRIVATE KEY" in data or b"client-key-data" in data or b"secret:" in data
            assert f.secret == holds_key, f.path


def test_ca_key_only_for_the_controller_manager(plans):
    ca_key = by_path(plans["controller-0"])["/etc/kubernetes/pki/ca.key"]
    assert ca_key.services == ("kube-controller-manager",)


def test_no_node_holds_the_etcd_ca_key_and_only_controllers_hold_etcd_credentials(inv, state, plans):
    etcd_ca_key = state.key("etcd-ca").read_bytes()
    etcd_client_key = state.key("apiserver-etcd-client").read_bytes()
    for n in inv.nodes:
        got = contents(plans[n.name])
        assert etcd_ca_key not in got, n.name
        assert (etcd_client_key in got) == n.is_controller, n.name
    paths = by_path(plans["controller-0"])
    assert paths["/etc/etcd/ca.crt"].content == state.cert("etcd-ca").read_bytes()
    assert paths["/etc/kubernetes/pki/etcd-ca.crt"].content == state.cert("etcd-ca").read_bytes()
    assert paths["/etc/kubernetes/pki/apiserver-etcd-client.key"].services == ("kube-apiserver",)


# --------------------------------------------------------------------------------------------
# Chapters


def test_chapters_and_services(inv, state, plans):
    node_chapters = [c.name for c in REGISTRY if c.targets(inv)]
    assert node_chapters == ["etcd", "control-plane", "workers", "pod-routes"]
    for n in inv.nodes:
        for f in plans[n.name]:
            assert f.chapter in node_chapters
            assert f.path in {g.path for g in chapter_files(inv, n.name, state, f.chapter)}
    etcd_files = chapter_files(inv, "controller-1", state, "etcd")
    assert {f.path for f in etcd_files} == {"/etc/etcd/ca.crt", "/etc/etcd/etcd.crt", "/etc/etcd/etcd.key",
                                            "/etc/systemd/system/etcd.service"}
    assert all(f.services == ("etcd",) for f in etcd_files)
    modes = {f.path: f.mode for f in etcd_files}
    assert modes["/etc/etcd/etcd.key"] == 0o600
    assert modes["/etc/etcd/etcd.crt"] == modes["/etc/etcd/ca.crt"] == 0o644
    assert chapter_files(inv, "worker-0", state, "etcd") == []
    assert chapter_files(inv, "controller-0", state, "workers") == []
    with pytest.raises(HardwayError, match="unknown chapter"):
        chapter_files(inv, "controller-0", state, "etc")
    with pytest.raises(HardwayError, match="no node named"):
        node_files(inv, "nobody", state)


def test_units_restart_their_own_service(plans):
    for files in plans.values():
        for f in files:
            if f.path.startswith("/etc/systemd/system/") and f.chapter != "pod-routes":
                assert f.services == (Path(f.path).stem,)
            elif f.chapter == "pod-routes":  # read at boot only: apply changes the live routes itself
                assert f.services == ()


# --------------------------------------------------------------------------------------------
# What the units say (as systemd parses them)


def _unit_argv(files: list[File], name: str, tmp_path: Path) -> list[str]:
    unit = tmp_path / f"{name}.service"
    unit.write_bytes(by_path(files)[f"/etc/systemd/system/{name}.service"].content or b"")
    (argv,) = exec_argv(unit)
    return argv


def test_apiserver_flags(inv, plans, tmp_path):
    argv = _unit_argv(plans["controller-1"], "kube-apiserver", tmp_path)
    assert argv == kube_apiserver_argv(inv, inv.node("controller-1"))
    for flag in ("--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
                 "--service-cluster-ip-range=10.32.0.0/24", "--authorization-mode=Node,RBAC",
                 "--advertise-address=10.240.0.11", "--runtime-config=api/all=true", "--allow-privileged=true",
                 "--service-account-issuer=https://10.240.0.100:6443",
                 "--encryption-provider-config=/etc/kubernetes/encryption-config.yaml",
                 "--etcd-servers=https://10.240.0.10:2379,https://10.240.0.11:2379,https://10.240.0.12:2379"):
        assert flag in argv
    paths = {f.path for f in plans["controller-1"]}
    for arg in argv[1:]:
        value = arg.partition("=")[2]
        if value.startswith("/etc/"):
            assert value in paths, f"{arg} references a file the plan does not push"


def test_controller_manager_and_scheduler_reference_planned_files(inv, plans, tmp_path):
    paths = {f.path for f in plans["controller-0"]}
    cm = _unit_argv(plans["controller-0"], "kube-controller-manager", tmp_path)
    for flag in ("--cluster-cidr=10.200.0.0/16", "--service-cluster-ip-range=10.32.0.0/24",
                 "--allocate-node-cidrs=true", "--use-service-account-credentials=true",
                 "--node-cidr-mask-size=24", "--cluster-signing-key-file=/etc/kubernetes/pki/ca.key"):
        assert flag in cm
    sched = _unit_argv(plans["controller-0"], "kube-scheduler", tmp_path)
    for arg in cm[1:] + sched[1:]:
        value = arg.partition("=")[2]
        if value.startswith("/etc/"):
            assert value in paths, arg
    config = yaml.safe_load(by_path(plans["controller-0"])["/etc/kubernetes/config/kube-scheduler.yaml"].content)
    assert config["clientConnection"]["kubeconfig"] in paths


def test_etcd_unit_references_only_planned_files(inv, plans, tmp_path):
    for c in inv.controllers:
        argv = _unit_argv(plans[c.name], "etcd", tmp_path)
        assert argv == etcd_argv(inv, c)
        referenced = {a.partition("=")[2] for a in argv if a.partition("=")[2].startswith("/etc/etcd/")}
        assert referenced == {"/etc/etcd/ca.crt", "/etc/etcd/etcd.crt", "/etc/etcd/etcd.key"}
        assert referenced <= {f.path for f in plans[c.name]}
        assert f"--name={c.name}" in argv
        assert f"--listen-client-urls=https://{c.address}:2379,https://127.0.0.1:2379" in argv
        assert ("--initial-cluster=controller-0=https://10.240.0.10:2380,controller-1=https://10.240.0.11:2380,"
                "controller-2=https://10.240.0.12:2380") in argv
        assert "--data-dir=/var/lib/etcd" in argv and "--heartbeat-interval=100" in argv


def test_worker_units_reference_planned_files(inv, plans, tmp_path):
    for w in inv.workers:
        paths = {f.path for f in plans[w.name]}
        kubelet = _unit_argv(plans[w.name], "kubelet", tmp_path)
        assert f"--node-ip={w.address}" in kubelet and "--register-node" not in kubelet
        for name in ("kubelet", "kube-proxy", "containerd"):
            for arg in _unit_argv(plans[w.name], name, tmp_path)[1:]:
                value = arg.partition("=")[2]
                if value.startswith(("/etc/", "/var/lib/")):
                    assert value in paths, arg


# --------------------------------------------------------------------------------------------
# Configs


def test_worker_configs(inv, state, plans):
    for w in inv.workers:
        files = by_path(plans[w.name])
        kubelet = yaml.safe_load(files["/var/lib/kubelet/kubelet-config.yaml"].content)
        assert kubelet["clusterDNS"] == ["10.32.0.10"]
        assert kubelet["clusterDomain"] == "cluster.local"
        assert kubelet["podCIDR"] == str(w.pod_cidr)
        assert kubelet["resolvConf"] == "/etc/resolv.conf"  # without facts; apply decides per node
        assert kubelet["cgroupDriver"] == "systemd"
        assert kubelet["containerRuntimeEndpoint"] == "unix:///var/run/containerd/containerd.sock"
        assert kubelet["authorization"]["mode"] == "Webhook"
        assert kubelet["authentication"]["anonymous"]["enabled"] is False
        for key in ("tlsCertFile", "tlsPrivateKeyFile"):
            assert kubelet[key] in files
        assert kubelet["authentication"]["x509"]["clientCAFile"] in files
        proxy = yaml.safe_load(files["/var/lib/kube-proxy/kube-proxy-config.yaml"].content)
        assert proxy["clusterCIDR"] == "10.200.0.0/16" and proxy["mode"] == "iptables"
        assert proxy["clientConnection"]["kubeconfig"] in files
        bridge = yaml.safe_load(files["/etc/cni/net.d/10-bridge.conf"].content)  # JSON is YAML
        assert bridge["ipam"]["ranges"] == [[{"subnet": str(w.pod_cidr)}]]
        assert yaml.safe_load(files["/etc/cni/net.d/99-loopback.conf"].content)["type"] == "loopback"
        toml = tomllib.loads(files["/etc/containerd/config.toml"].content.decode())
        assert toml["version"] == 3
        runc = toml["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"]
        assert runc["options"]["SystemdCgroup"] is True


def test_containerd_1x_gets_config_version_2(state):
    text = SAMPLE.read_text().replace('containerd: "2.1.0"', 'containerd: "1.7.27"')
    inv17 = inventory.parse(text, "sample-1.7.yaml", base=SAMPLE.parent)
    toml = tomllib.loads(by_path(node_files(inv17, "worker-0", state))["/etc/containerd/config.toml"]
                         .content.decode())
    assert toml["version"] == 2
    runc = toml["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"]
    assert runc["options"]["SystemdCgroup"] is True


def test_rbac_binds_the_apiserver_kubelet_client_cn(inv):
    from hardway.chapters.control_plane.files import rbac_yaml

    docs = list(yaml.safe_load_all(rbac_yaml(inv)))  # applied from the jumpbox with kubectl
    role, binding = docs
    assert role["kind"] == "ClusterRole" and role["metadata"]["name"] == "system:kube-apiserver-to-kubelet"
    assert set(role["rules"][0]["resources"]) == {"nodes/proxy", "nodes/stats", "nodes/log", "nodes/spec",
                                                   "nodes/metrics"}
    assert binding["roleRef"]["name"] == "system:kube-apiserver-to-kubelet"
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                    "name": "kubernetes"}]


# --------------------------------------------------------------------------------------------
# Missing material, binaries


def test_missing_pki_names_the_file_and_the_fix(inv, state, tmp_path):
    copy = PkiState(tmp_path / "pki")
    shutil.copytree(state.root, copy.root)
    copy.key("kube-apiserver").unlink()
    with pytest.raises(HardwayError, match=r"kube-apiserver\.key.*missing|missing.*kube-apiserver\.key") as err:
        node_files(inv, "controller-0", copy)
    assert "run `invoke pki`" in str(err.value)
    assert len(node_files(inv, "worker-0", copy)) > 0  # workers do not need it
    copy.kubeconfig("kube-proxy").unlink()
    with pytest.raises(HardwayError, match=r"kube-proxy\.kubeconfig.*run `invoke pki`"):
        node_files(inv, "worker-1", copy)
    with pytest.raises(HardwayError, match="run `invoke pki`"):
        node_files(inv, "worker-1", PkiState(tmp_path / "nothing"))


def test_binaries_resolved_are_planned_unresolved_are_left_out(state, tmp_path):
    fake_etcd = tmp_path / "etcd"
    fake_etcd.write_bytes(b"\x7fELF not really")
    text = SAMPLE.read_text().replace("etcd: {path: ./bin/etcd}", f"etcd: {{path: {fake_etcd}}}")
    text = text.replace("etcdctl: {path: ./bin/etcdctl}",
                        "etcdctl: {url: https://example.invalid/etcdctl, sha256: " + "ab" * 32 + "}")
    inv_b = inventory.parse(text, "binaries.yaml", base=SAMPLE.parent)
    files = by_path(chapter_files(inv_b, "controller-0", state, "etcd", cache_dir=tmp_path / "cache"))
    etcd = files["/usr/local/bin/etcd"]
    assert etcd.source == fake_etcd and etcd.mode == 0o755 and etcd.services == ("etcd",)
    assert etcd.chapter == "etcd" and not etcd.secret
    assert "/usr/local/bin/etcdctl" not in files  # URL source not fetched into the cache
    cached = tmp_path / "cache" / ("ab" * 8) / "etcdctl"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"etcdctl")
    files = by_path(chapter_files(inv_b, "controller-0", state, "etcd", cache_dir=tmp_path / "cache"))
    assert files["/usr/local/bin/etcdctl"].source == cached
    assert "/usr/local/bin/etcdctl" not in by_path(chapter_files(inv_b, "controller-0", state, "etcd"))


def test_the_load_balancer_gets_its_config_its_health_certificate_and_the_ca_only(inv, state, plans):
    lb = inv.loadbalancers[0]
    files = by_path(plans[lb.name])
    assert set(files) == {"/etc/haproxy/kube-apiserver-lb.cfg", "/etc/haproxy/kube-apiserver-lb/ca.crt",
                          "/etc/haproxy/kube-apiserver-lb/health.crt", "/etc/haproxy/kube-apiserver-lb/health.crt.key",
                          "/etc/systemd/system/kube-apiserver-lb.service"}
    assert files["/etc/haproxy/kube-apiserver-lb/ca.crt"].content == state.cert("ca").read_bytes()
    assert files["/etc/haproxy/kube-apiserver-lb/health.crt.key"].mode == 0o600
    keys = [f.path for f in files.values() if f.secret]
    assert keys == ["/etc/haproxy/kube-apiserver-lb/health.crt.key"], "its own health-check key, nothing else"
    config = files["/etc/haproxy/kube-apiserver-lb.cfg"].content.decode()
    assert "bind :6443" in config and "mode tcp" in config and "option httpchk GET /readyz" in config
    for c in inv.controllers:
        assert f"server {c.name} {c.address}:6443" in config
