"""The tutorial's thirteen chapters, and which part of hardway does each.

Kubernetes the Hard Way has 13 chapters; hardway's registry has the six that build the cluster
(hardway.chapters.REGISTRY). This maps one onto the other: the node chapters by their registry name
(never spelled here: looked up through the task they share), the jumpbox chapters (certificates,
kubeconfigs, encryption config) onto parts of the pki chapter's checks, and the rest onto the tasks
that do them (the jumpbox's tools, `lab.up`, `kubeconfig.admin`, `lab.down` / `reset`).
"""

from __future__ import annotations

from dataclasses import dataclass

from hardway.chapters import REGISTRY, Chapter
from hardway.errors import HardwayError

# how a tutorial chapter is judged and applied (see hardway.walkthrough.progress)
TOOLS, BINARIES, MACHINES, PKI_PART, NODES, ADMIN, CLEANUP, CLUSTER = (
    "tools", "binaries", "machines", "pki-part", "nodes", "admin", "cleanup", "cluster")


@dataclass(frozen=True)
class TutorialChapter:
    number: int
    slug: str  # docs/chapters/NN-slug.md
    title: str
    summary: str  # what it is for: two or three sentences
    kind: str
    task: str  # what does it in hardway ("" where nothing does: the reader's own machines)
    registry_task: str = ""  # for node / pki chapters: the registry chapter whose task this is
    part: str = ""  # for a part of the pki chapter: which of its checks ("certificate", "kubeconfig", ...)

    @property
    def command(self) -> str:
        """What a person types to do it: `invoke TASK`, or the shell command itself."""
        return self.task if " " in self.task else f"invoke {self.task}"

    @property
    def label(self) -> str:
        return f"{self.number:02d}"

    @property
    def doc(self) -> str:
        return f"docs/chapters/{self.label}-{self.slug}.md"

    def chapter(self) -> Chapter | None:
        """hardway's chapter behind it (registry), if any."""
        if not self.registry_task:
            return None
        return next(c for c in REGISTRY if c.task == self.registry_task)


def _registry(task: str) -> Chapter:
    for c in REGISTRY:
        if c.task == task:
            return c
    raise HardwayError(f"no chapter in the registry is applied by `invoke {task}`")  # a bug: checked by the tests


def _node(number: int, slug: str, task: str) -> TutorialChapter:
    c = _registry(task)
    return TutorialChapter(number, slug, c.title, c.summary, NODES if c.task != "smoke-test" else CLUSTER, task,
                           registry_task=task)


CHAPTERS: tuple[TutorialChapter, ...] = (
    TutorialChapter(1, "prerequisites", "Prerequisites",
                    "The machines the cluster runs on and the tools the jumpbox needs to reach and build them: "
                    "ssh and scp, openssl, curl, systemd-analyze. hardway checks that each one is on the jumpbox.",
                    TOOLS, "bash scripts/setup.sh"),
    TutorialChapter(2, "jumpbox", "Set up the jumpbox",
                    "The jumpbox is where you build the cluster from: it holds every binary the nodes get, the "
                    "CA and kubectl. Every binary the inventory names must be on it (a local path, or a URL "
                    "fetched into the cache and checked against its sha256).",
                    BINARIES, "invoke chapter 2 --apply"),  # fetches every binary the inventory names
    TutorialChapter(3, "compute-resources", "Provisioning compute resources",
                    "The machines themselves, one per inventory node, each reachable over SSH as root with a "
                    "known host key and its own address. The local lab boots them as systemd-nspawn machines.",
                    MACHINES, "lab.up"),
    TutorialChapter(4, "certificate-authority", "Provisioning a CA and generating TLS certificates",
                    "A CA of the cluster's own signs a certificate for every component, so each side of every "
                    "connection proves who it is; etcd gets a CA of its own. They are made on the jumpbox and "
                    "reach the nodes only with the chapters that use them.",
                    PKI_PART, "pki", registry_task="pki", part="certificate"),
    TutorialChapter(5, "kubeconfigs", "Generating Kubernetes configuration files for authentication",
                    "A kubeconfig tells a client where the apiserver is, which CA to trust and which certificate "
                    "to present: one for each kubelet, kube-proxy, the controller manager, the scheduler and "
                    "the admin.",
                    PKI_PART, "pki", registry_task="pki", part="kubeconfig"),
    TutorialChapter(6, "encryption-keys", "Generating the data encryption config and key",
                    "The apiserver encrypts Secrets before they reach etcd, with a key from this config. The key "
                    "is made once and never regenerated: a new one would make every stored Secret unreadable.",
                    PKI_PART, "pki", registry_task="pki", part="secret-mode"),
    _node(7, "etcd", "bootstrap-etcd"),
    _node(8, "control-plane", "bootstrap-control-plane"),
    _node(9, "workers", "bootstrap-workers"),
    TutorialChapter(10, "kubectl", "Configuring kubectl for remote access",
                    "kubectl on the jumpbox talks to the cluster through the load balancer with the admin "
                    "certificate. This writes the admin kubeconfig (0600) where kubectl looks for it.",
                    ADMIN, "kubeconfig.admin"),
    _node(11, "pod-routes", "pod-routes"),
    _node(12, "smoke-test", "smoke-test"),
    TutorialChapter(13, "cleanup", "Cleaning up",
                    "Take the cluster down: the lab's machines with `invoke lab.down`, or on your own machines "
                    "what hardway deployed with `invoke reset NODE --yes` (data dirs are moved aside, never "
                    "deleted). Done when no node holds anything hardway deployed.",
                    CLEANUP, "lab.down"),
)


def find(which: str) -> TutorialChapter:
    """A chapter by number ("7", "07"), slug ("etcd"), or hardway's chapter or task name."""
    w = which.strip().lower()
    for t in CHAPTERS:
        names = {str(t.number), t.label, t.slug, t.task}
        c = t.chapter()
        if c is not None and t.kind in (NODES, CLUSTER):
            names.add(c.name)
        if w in names:
            return t
    choices = ", ".join(f"{t.number} ({t.slug})" for t in CHAPTERS)
    raise HardwayError(f"no tutorial chapter {which!r}; chapters: {choices}")
