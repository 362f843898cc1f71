"""hardway's command line: thin invoke tasks over the ``hardway`` library, one module per group.

Each task parses its flags, loads the inventory, calls one library function and prints its
report. User errors (``HardwayError``) become one line on stderr and exit code 1 (common.py).
"""

import sys
from pathlib import Path

# invoke puts tasks/ on sys.path, not the checkout: put the checkout first, so these tasks drive this
# checkout's hardway even where another checkout is the one pip-installed
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from invoke import Collection

from . import chapters, day2, encryption, kubeconfig, lab, pki, render, rotate, walkthrough

ns = Collection()
ns.add_collection(pki.pki)
ns.add_task(render.render_build)
ns.add_collection(lab.lab_ns)
ns.add_task(chapters.verify)
ns.add_collection(kubeconfig.kubeconfig_ns)
ns.add_task(rotate.rotate_certs)
ns.add_task(encryption.rotate_encryption_key)
chapters.add_apply_tasks(ns)
day2.add_to(ns)
ns.add_task(walkthrough.chapter)
