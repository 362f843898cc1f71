"""Time the full PKI of inventory/sample.yaml (3 controllers + 2 workers, 13 certificates):
hardway (``ensure_certificates`` into an empty dir) against the openssl CLI driven the tutorial's
way (per cert: keygen, ``req -new``, ``x509 -req`` with an extension file), for ecdsa-p256 and
rsa-4096. Prints the median of a few runs and the ratio openssl/hardway (>1: hardway is faster).

    python bench/pki.py [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hardway import inventory, pki  # noqa: E402 - after the path tweak, so the checkout is benchmarked
from hardway.inventory import Inventory  # noqa: E402
from hardway.state import PkiState  # noqa: E402

SAMPLE = ROOT / "inventory" / "sample.yaml"


def sample(algorithm: str) -> Inventory:
    text = SAMPLE.read_text().replace("key_algorithm: ecdsa-p256", f"key_algorithm: {algorithm}")
    inv = inventory.parse(text, str(SAMPLE), base=SAMPLE.parent)
    assert inv.key_algorithm == algorithm
    return inv


def run_hardway(inv: Inventory, out: Path) -> None:
    pki.ensure_certificates(inv, PkiState(out))


def _ossl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def _keygen(algorithm: str, key: str, cwd: Path) -> None:
    if algorithm == "ecdsa-p256":
        _ossl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key, cwd=cwd)
    else:
        _ossl("genrsa", "-out", key, algorithm.split("-")[1], cwd=cwd)


def run_openssl(inv: Inventory, out: Path) -> None:
    """The same certificates, made with the openssl CLI the way the tutorial does."""
    out.mkdir(parents=True)
    alg = inv.key_algorithm
    specs = pki.catalogue(inv)
    ca = specs[0]
    (out / "ca.cnf").write_text(
        "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = v3_ca\n"
        f"[dn]\nCN = {ca.common_name}\n"
        "[v3_ca]\nbasicConstraints = critical,CA:TRUE\n"
        "keyUsage = critical,digitalSignature,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n"
    )
    _keygen(alg, "ca.key", out)
    _ossl("req", "-x509", "-new", "-sha256", "-key", "ca.key", "-days", inv.ca_validity_days,
          "-config", "ca.cnf", "-out", "ca.crt", cwd=out)
    usage = "digitalSignature,keyEncipherment" if alg.startswith("rsa-") else "digitalSignature"
    for spec in specs[1:]:
        subj = (f"/O={spec.organization}" if spec.organization else "") + f"/CN={spec.common_name}"
        ekus = ",".join(e for e, on in (("clientAuth", spec.client), ("serverAuth", spec.server)) if on)
        ext = [
            "basicConstraints = critical,CA:FALSE", f"keyUsage = critical,{usage}",
            f"extendedKeyUsage = {ekus}", "subjectKeyIdentifier = hash", "authorityKeyIdentifier = keyid",
        ]
        if spec.sans:
            ext.append("subjectAltName = " + ",".join(f"{kind}:{value}" for kind, value in spec.sans))
        (out / f"{spec.name}.ext").write_text("\n".join(ext) + "\n")
        _keygen(alg, f"{spec.name}.key", out)
        _ossl("req", "-new", "-key", f"{spec.name}.key", "-subj", subj, "-out", f"{spec.name}.csr", cwd=out)
        _ossl("x509", "-req", "-in", f"{spec.name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
              "-CAcreateserial", "-days", inv.cert_validity_days, "-sha256",
              "-extfile", f"{spec.name}.ext", "-out", f"{spec.name}.crt", cwd=out)
    _ossl("pkey", "-in", "service-accounts.key", "-pubout", "-out", "service-accounts.pub", cwd=out)


def verify(inv: Inventory, out: Path) -> None:
    certs = [f"{s.name}.crt" for s in pki.catalogue(inv)]
    r = subprocess.run(["openssl", "verify", "-x509_strict", "-CAfile", "ca.crt", *certs], cwd=out,
                       capture_output=True, text=True)
    if r.returncode != 0 or r.stdout.count(": OK") != len(certs):
        raise SystemExit(f"{out}: the generated certificates do not verify:\n{r.stdout}{r.stderr}")


def median_seconds(fn: Callable[[Inventory, Path], None], inv: Inventory, repeats: int) -> float:
    times = []
    for i in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench-pki-") as tmp:
            out = Path(tmp) / "pki"
            start = time.perf_counter()
            fn(inv, out)
            times.append(time.perf_counter() - start)
            if i == 0:
                verify(inv, out)  # both ways must yield a valid set, or the timing means nothing
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per cell; the median is shown")
    args = parser.parse_args()
    inv0 = sample("ecdsa-p256")
    n = len(pki.catalogue(inv0))
    print(f"{n} certificates ({len(inv0.controllers)} controllers, {len(inv0.workers)} workers), "
          f"median of {args.repeats} runs\n")
    rows = [("algorithm", "hardway s", "openssl CLI s", "ratio")]
    for alg in ("ecdsa-p256", "rsa-4096"):
        inv = sample(alg)
        hw = median_seconds(run_hardway, inv, args.repeats)
        cli = median_seconds(run_openssl, inv, args.repeats)
        rows.append((alg, f"{hw:.3f}", f"{cli:.3f}", f"{cli / hw:.1f}x"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(f"{c:<{widths[0]}}" if i == 0 else f"{c:>{widths[i]}}" for i, c in enumerate(r)))
    print("\nratio = openssl CLI / hardway (RSA key generation dominates both; its time varies a lot)")


if __name__ == "__main__":
    main()
