"""Day-2 operations on a running cluster, one module per task.

- ``replace``:  ``invoke etcd.replace NODE``: re-add an etcd member on an empty data dir, quorum kept
- ``snapshot``: ``invoke etcd.snapshot``: a snapshot from a healthy member, kept on the jumpbox
- ``restore``:  ``invoke etcd.restore SNAPSHOT``: every member from one snapshot, a new cluster token
- ``reset``:    ``invoke reset NODE``: undo what hardway deployed on a node, data moved aside
- ``diagnose``: ``invoke diagnose``: one tarball of evidence from every node, and a summary of causes

Each builds a ``hardway.procedure.Procedure`` (a dry run prints it; Ctrl-C undoes what it can).
Nothing is imported here, so a chapter may use a day-2 helper without an import cycle.
"""
