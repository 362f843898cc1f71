"""The local lab: real systemd machines on one host, one network namespace and cgroup each.

Each node is ``systemd-nspawn --boot`` over an overlayfs whose lower dir is the host's ``/``.

- ``addresses``: names, the address plan (``LabLayout``), the inventory/hosts/sshd texts, the record
- ``image``: what a node's upper dir (its disk) holds before the first boot; the lab's SSH keys
- ``cgroups``: each machine in a cgroup of its own (why: see that module)
- ``machine``: network, mount, launch; ready (systemd ``running`` + strict SSH); power-off, teardown
- ``probes``: reading the host (processes, mounts, netns, links), running commands, preflight
- ``node_status``: the per-node status table
- ``lifecycle``: ``up``, ``get``, ``stop_node``/``start_node``, ``down`` and the ``Lab`` handle
- ``diskio``: a slow disk for one node (the slow-disk drill): its machine's block-I/O throttle

State (root only)::

    /var/lib/hardway/labs/<lab>/
        lab.json                 what was asked: name, subnet, controllers, workers
        inventory.yaml           the lab's inventory (paths absolute)
        ssh/id_ed25519{,.pub}    the key every node accepts for root
        ssh/known_hosts          every node's host key, read from its disk
        nodes/<node>/upper/      the node's disk: everything it changed relative to the host's /
        nodes/<node>/work/       overlayfs work dir
        nodes/<node>/merged/     the node's root while it runs (an overlay mount)
        nodes/<node>/nspawn.log  the machine's console
        nodes/<node>/prepared    marker: the upper dir is complete
    /sys/fs/cgroup/{systemd,unified}/hw.<lab>.<node>/   the machine's cgroups while it runs

Everything is named by lab, so labs with other names and subnets run side by side.
"""

from __future__ import annotations

import logging

from hardway.lab.addresses import (
    DEFAULT_NAME,
    DEFAULT_SUBNET,
    SCRATCH_POOL,
    STATE_ROOT,
    LabLayout,
    LabNode,
    bridge_name,
    check_name,
    iface_tag,
    known_hosts_line,
    layout,
    link_pattern,
    load_layout,
    machine_name,
    netns_name,
    recorded_labs,
    render_hosts,
    render_inventory,
    render_sshd_config,
    veth_name,
    write_inventory,
)
from hardway.lab.image import PROJECT_ROOT, NodeImage, node_image, prepare_node, read_host_key
from hardway.lab.lifecycle import Lab, down, get, start_node, stop_node, up
from hardway.lab.machine import Removal, nspawn_command
from hardway.lab.node_status import NodeStatus, format_status, status
from hardway.lab.probes import free_subnet, nspawn_node, nspawn_processes, parse_mountinfo, preflight, require_root

logging.getLogger("paramiko").addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_NAME", "DEFAULT_SUBNET", "PROJECT_ROOT", "SCRATCH_POOL", "STATE_ROOT",
    "Lab", "LabLayout", "LabNode", "NodeImage", "NodeStatus", "Removal",
    "bridge_name", "check_name", "down", "format_status", "free_subnet", "get", "iface_tag", "known_hosts_line",
    "layout", "link_pattern", "load_layout", "machine_name", "netns_name", "node_image", "nspawn_command",
    "nspawn_node", "nspawn_processes", "parse_mountinfo", "preflight", "prepare_node", "read_host_key",
    "recorded_labs", "render_hosts", "render_inventory", "render_sshd_config", "require_root", "start_node",
    "status", "stop_node", "up", "veth_name", "write_inventory",
]
