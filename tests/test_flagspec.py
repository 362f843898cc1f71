"""hardway.flagspec on the real v1.32 data, and every flag and config key hardway renders against it."""

from __future__ import annotations

import pytest
import yaml

from hardway import flagspec, paths, plan
from hardway.chapters import control_plane, workers
from hardway.errors import HardwayError
from hardway.flagspec import COMPONENTS

# hardway renders no deprecated flag (kubelet --register-node went in issue 14: registerNode is set in the
# kubelet's config file). Keep it empty.
EXPECTED_DEPRECATED: set[tuple[str, str]] = set()

ARGV = {
    "kube-apiserver": control_plane.kube_apiserver_argv,
    "kube-controller-manager": control_plane.kube_controller_manager_argv,
    "kube-scheduler": control_plane.kube_scheduler_argv,
    "kubelet": workers.kubelet_argv,
    "kube-proxy": workers.kube_proxy_argv,
}
CONFIGS = {  # component -> the config file hardway renders for it
    "kubelet": f"{paths.KUBELET_DIR}/kubelet-config.yaml",
    "kube-proxy": f"{paths.KUBE_PROXY_DIR}/kube-proxy-config.yaml",
    "kube-scheduler": f"{paths.K8S_DIR}/config/kube-scheduler.yaml",
}


@pytest.fixture(scope="module")
def specs():
    return {c: flagspec.load(c, "1.32.3") for c in COMPONENTS}


# --------------------------------------------------------------------------------------------
# The data


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_data_file_loads_with_its_provenance(component, specs):
    spec = specs[component]
    raw = spec.raw
    assert spec.component == component and spec.version == "1.32" and spec.complete
    assert len(spec.flags) > 50
    source = raw["source"]
    assert source["page"].startswith("https://kubernetes.io/docs/reference/command-line-tools-reference/")
    assert source["repo"] and source["path"] and source["fetched"] and source["version_evidence"]
    for flag in spec.flags.values():
        assert flag.type, flag.name
        assert not (flag.deprecated and flag.rejected), flag.name


def test_patch_versions_and_prefixes_share_the_minor(specs):
    assert flagspec.load("kubelet", "v1.32") is flagspec.load("kubelet", "1.32.9") is specs["kubelet"]


def test_an_uncovered_version_is_one_line_naming_what_exists():
    with pytest.raises(HardwayError) as err:
        flagspec.load("kubelet", "1.29.0")
    assert "v1.29" in str(err.value) and "1.32" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(HardwayError, match="known components"):
        flagspec.load("kubectl", "1.32")


def test_unknown_and_deprecated(specs):
    api, kubelet, proxy = specs["kube-apiserver"], specs["kubelet"], specs["kube-proxy"]
    assert api.unknown(["--etcd-servers=https://x:2379", "--etcd-server=x", "--insecure-port=0"]) == [
        "--etcd-server=x", "--insecure-port=0"]
    assert kubelet.deprecated(["--register-node=true", "--config=/x"])[0][0] == "--register-node=true"
    assert "config file" in kubelet.deprecated(["--register-node"])[0][1]
    assert proxy.flag("--log_dir") is proxy.flag("--log-dir") is not None  # '_' and '-' are one separator
    assert api.flag("-v") is api.flag("--v") and api.flag("-h").name == "help"
    assert kubelet.deprecated(["--runonce"])  # still registered, refused by v1.32


@pytest.mark.parametrize(("component", "flag", "good", "bad"), [
    ("kube-apiserver", "--service-cluster-ip-range", "10.32.0.0/24", "10.32.0.0/33"),
    ("kube-apiserver", "--service-cluster-ip-range", "10.32.0.0/24,fd00::/108", "10.32.0.0/24,10.33.0.0/24"),
    ("kube-apiserver", "--advertise-address", "10.240.0.10", "10.240.0.300"),
    ("kube-apiserver", "--kubelet-preferred-address-types", "InternalIP,ExternalIP,Hostname", "InternalIP,NodeIP"),
    ("kube-apiserver", "--authorization-mode", "Node,RBAC", "Node,rbac"),
    ("kube-apiserver", "--event-ttl", "1h30m", "1 hour"),
    ("kube-apiserver", "--secure-port", "6443", "65536"),
    ("kube-apiserver", "--allow-privileged", "true", "yes"),
    ("kube-apiserver", "--etcd-servers", "https://10.240.0.10:2379,https://[::1]:2379", "10.240.0.10:2379"),
    ("kube-apiserver", "--service-node-port-range", "30000-32767", "32767-30000"),
    ("kube-apiserver", "--runtime-config", "api/all=true", "api/all"),
    ("kube-controller-manager", "--node-cidr-mask-size", "24", "twenty-four"),
    ("kube-controller-manager", "--cluster-cidr", "10.200.0.0/16", "10.200.0.0"),
    ("kubelet", "--node-ip", "10.240.0.20,fd00::20", "10.240.0.20,worker-0"),
    ("kubelet", "--feature-gates", "NodeSwap=true", "NodeSwap=maybe"),
    ("kubelet", "--eviction-hard", "memory.available<100Mi", None),
    ("kube-proxy", "--proxy-mode", "nftables", "userspace"),
    ("kube-proxy", "--healthz-bind-address", "0.0.0.0:10256", "0.0.0.0"),
    ("kube-scheduler", "--v", "2", "2.5"),
])
def test_validate(specs, component, flag, good, bad):
    spec = specs[component]
    assert spec.validate(flag, good) is None
    if bad is not None:
        assert spec.validate(flag, bad), f"{flag}={bad} passed"


def test_check_argv_parses_like_pflag(specs):
    api = specs["kube-apiserver"]
    values, issues = api.parse_argv(["--v", "2", "--allow-privileged", "--secure-port=6443", "--etcd-cafile"])
    assert values == {"v": ["2"], "allow-privileged": ["true"], "secure-port": ["6443"]}
    assert [(i.kind, i.flag) for i in issues] == [("missing-value", "--etcd-cafile")]
    kinds = {i.kind for i in api.check_argv(["stray", "--nope=1", "--admission-control=NodeRestriction"])}
    assert kinds == {"argument", "unknown", "deprecated"}
    assert [i.fatal for i in api.check_argv(["--admission-control=NodeRestriction"])] == [False]


def test_check_config(specs):
    kubelet = specs["kubelet"]
    doc = {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
           "authentication": {"x509": {"clientCAFile": "/ca.crt"}, "anonymous": {"enabled": False}},
           "clusterDNS": ["10.32.0.10"], "runtimeRequestTimeout": "15m", "cgroupDriver": "systemd"}
    assert kubelet.check_config(doc) == []
    bad = dict(doc, authentication={"x509": {"clientCaFile": "/ca.crt"}}, clusterDNS=["dns"], registerNode="yes",
               runOnce=True, imagePullCredentialsVerificationPolicy="NeverVerify", cgroupDriver="System")
    problems = "\n".join(kubelet.check_config(bad))
    for part in ("authentication.x509.clientCaFile: unknown key (did you mean clientCAFile?)",
                 "clusterDNS: not an IP", "registerNode: expected true or false", "runOnce: v1.32 removed",
                 "imagePullCredentialsVerificationPolicy: unknown key (added in v1.33", "cgroupDriver: expected one"):
        assert part in problems
    assert specs["kube-scheduler"].check_config({"apiVersion": "kubescheduler.config.k8s.io/v1beta3",
                                                  "kind": "KubeSchedulerConfiguration"}) == [
        "apiVersion: 'kubescheduler.config.k8s.io/v1beta3', expected 'kubescheduler.config.k8s.io/v1'"]
    assert specs["kube-proxy"].check_config({"apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                                              "kind": "KubeProxyConfiguration", "mode": "ipvs",
                                              "clientConnection": {"kubeconfig": 1}}) == [
        "clientConnection.kubeconfig: expected a string, got 1"]


# --------------------------------------------------------------------------------------------
# What hardway renders


def test_every_rendered_flag_is_known_and_none_deprecated(inv, specs):
    deprecated = set()
    for node in inv.nodes:
        on_node = [c for c in COMPONENTS
                   if (node.is_worker if c in ("kubelet", "kube-proxy") else node.is_controller)]
        for component in on_node:
            argv = ARGV[component](inv, node)
            assert argv[0] == f"{paths.BIN}/{component}"
            issues = specs[component].check_argv(argv[1:])
            fatal = [i.message for i in issues if i.fatal]
            assert not fatal, f"{node.name} {component}: {fatal}"
            deprecated |= {(component, i.flag) for i in issues if i.kind == "deprecated"}
    assert deprecated == EXPECTED_DEPRECATED


def test_every_rendered_config_file_is_known(inv, state, specs):
    checked = set()
    for node in inv.nodes:
        files = {f.path: f for f in plan.node_files(inv, node, state)}
        for component, path in CONFIGS.items():
            if path in files:
                problems = specs[component].check_config(yaml.safe_load(files[path].content))
                assert problems == [], f"{node.name} {path}: {problems}"
                checked.add(component)
    assert checked == set(CONFIGS)


def test_the_units_carry_the_checked_argv(inv, state):
    node = inv.workers[0]
    unit = {f.path: f for f in plan.node_files(inv, node, state)}[f"{paths.UNIT_DIR}/kubelet.service"]
    for word in workers.kubelet_argv(inv, node)[1:]:
        assert word.encode() in unit.content
