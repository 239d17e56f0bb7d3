"""Shamir secret sharing with Feldman verifiable commitments, and the share file format.

Standard library only, Python 3.9+: it is part of the remote tool, and the quorum example
ships it. Nothing here ever prints or puts a share value or a secret in a message.

The group is the RFC 3526 2048-bit MODP group. p is a safe prime (p = 2q + 1, q prime), so
Z_p* has a subgroup of prime order q: the quadratic residues. Shares and coefficients live in
Z_q, commitments in that subgroup. The generator is g = 2: every RFC 3526 prime is
congruent to -1 modulo 2^64, hence p = 7 (mod 8), so 2 is a quadratic residue (second
supplement to quadratic reciprocity). Its order therefore divides q, and since 2 != 1 and q
is prime, its order is exactly q: g generates the whole order-q subgroup.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypedDict, Union

P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
    "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
    "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
    "955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)
Q = (P - 1) // 2
G = 2
GROUP = "rfc3526-2048"
VERSION = 1  # a share file that carries its verifier (the commitments) inside
VERSION_SEPARATE = 2  # a share file that names one deployment-wide verifier file by digest
VERIFIER_FILE = "verifier.json"
SECRET_BYTES = 32  # deployment secrets are 256-bit integers (well below q)

Share = Tuple[int, int]

# Fixed-base exponentiation of g (Yao's method): with g^(2^(w*k)) precomputed once, g^e costs
# about bits/w + 2^(w+1) multiplications instead of a square-and-multiply over every bit.
# Measured here it is three times faster than pow(), which makes split() for 1000 servers
# (501 commitments) take seconds instead of ten.
_WINDOW = 6
_MASK = (1 << _WINDOW) - 1
_G_POWERS: List[int] = []


def _g_powers() -> List[int]:
    if not _G_POWERS:
        x = G
        for _ in range((Q.bit_length() + _WINDOW - 1) // _WINDOW):
            _G_POWERS.append(x)
            x = pow(x, 1 << _WINDOW, P)
    return _G_POWERS


def _sum_buckets(buckets: List[int]) -> int:
    """prod over d of buckets[d]^d mod P, by running products (the bucket method's last step)."""
    result = 1
    running = 1
    for digit in range(len(buckets) - 1, 0, -1):
        if buckets[digit] != 1:
            running = running * buckets[digit] % P
        if running != 1:
            result = result * running % P
    return result


def pow_g(exponent: int) -> int:
    """g^exponent mod p, for 0 <= exponent < q."""
    powers = _g_powers()
    buckets = [1] * (_MASK + 1)
    k = 0
    e = exponent
    while e:
        digit = e & _MASK
        if digit:
            b = buckets[digit]
            buckets[digit] = powers[k] if b == 1 else b * powers[k] % P
        e >>= _WINDOW
        k += 1
    return _sum_buckets(buckets)


def random_secret() -> int:
    """A fresh 256-bit deployment secret."""
    return secrets.randbits(8 * SECRET_BYTES)


def split(secret: int, n: int, t: int) -> Tuple[List[int], List[Share]]:
    """Split `secret` into `n` shares, any `t` of which recover it.

    Returns (commitments C_j = g^a_j mod p for j < t, shares [(i, f(i) mod q) for i in 1..n])
    where f(x) = a_0 + a_1 x + ... + a_{t-1} x^{t-1} and a_0 = secret.
    """
    if not 1 <= t <= n:
        raise ValueError("need 1 <= threshold <= number of shares")
    if not 0 <= secret < Q:
        raise ValueError("the secret must be a non-negative integer below the group order")
    coefficients = [secret] + [secrets.randbelow(Q) for _ in range(t - 1)]
    collect = _commit_in_workers(coefficients)
    shares = [(i, _evaluate(coefficients, i)) for i in range(1, n + 1)]  # meanwhile, here
    return collect(), shares


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    """f(x) mod q by Horner's rule, reduced once every 32 steps (x is small: the number grows
    by a few bits a step, and a reduction costs more than the steps it saves)."""
    value = 0
    backwards = coefficients[::-1]
    for k in range(0, len(backwards), 32):
        for a in backwards[k : k + 32]:
            value = value * x + a
        value %= Q
    return value


def _pow_g_all(exponents: Sequence[int]) -> List[int]:
    return [pow_g(e) for e in exponents]


_PARALLEL_FROM = 128  # commitments: below this, starting worker processes costs more


def _commit_in_workers(coefficients: List[int]) -> Callable[[], List[int]]:
    """Start the commitments g^a_j in worker processes, one per CPU, each this very file
    run as `--pow-g` (for many servers they are most of a split: 501 take 2 s on one CPU);
    returns the function that collects them. Few of them, one CPU, or no worker to be had
    (this file inside a zip): they are computed here, by that function. The coefficients
    reach the workers over pipes, never a file or an argument."""
    cpus = os.cpu_count() or 1
    here = os.path.abspath(__file__)
    if len(coefficients) < _PARALLEL_FROM or cpus < 2 or not os.path.isfile(here):
        return lambda: _pow_g_all(coefficients)
    size = -(-len(coefficients) // cpus)
    chunks = [coefficients[k : k + size] for k in range(0, len(coefficients), size)]
    workers: List[Tuple[Any, List[int]]] = []
    for chunk in chunks:
        try:
            worker = subprocess.Popen(
                [sys.executable, "-I", here, "--pow-g"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            worker.stdin.write("".join("%x\n" % a for a in chunk).encode())  # type: ignore[union-attr]
            worker.stdin.close()  # type: ignore[union-attr]
        except OSError:
            worker = None
        workers.append((worker, chunk))

    def collect() -> List[int]:
        commitments: List[int] = []
        for worker, chunk in workers:
            got: List[int] = []
            if worker is not None:
                out = worker.stdout.read().decode()
                worker.wait()
                got = [int(line, 16) for line in out.split()] if worker.returncode == 0 else []
            answered = len(got) == len(chunk) and got[0] == pow_g(chunk[0]) and got[-1] == pow_g(chunk[-1])
            # a worker that died, answered short or answered wrong: its part again, here
            commitments.extend(got if answered else _pow_g_all(chunk))
        return commitments

    return collect


def _pow_g_worker() -> int:
    """`--pow-g`: exponents in hex, one a line, on stdin; g^e mod p the same way on stdout."""
    exponents = [int(line, 16) for line in sys.stdin.read().split()]
    sys.stdout.write("".join("%x\n" % pow_g(e) for e in exponents))
    return 0


def verify_share(index: int, value: int, commitments: Sequence[int]) -> bool:
    """True when g^value == prod_j C_j^(index^j) mod p, i.e. the share lies on the committed
    polynomial."""
    if not commitments or not 1 <= index < Q or not 0 <= value < Q:
        return False
    if any(not 1 < c < P for c in commitments):
        return False
    # Horner in the exponent: every step raises to the small exponent `index`, far cheaper
    # than computing index^j and raising to that (this dominates for n = 1000).
    acc = commitments[-1]
    for c in reversed(commitments[:-1]):
        acc = pow(acc, index, P) * c % P
    return pow_g(value) == acc


def _multi_pow(bases: Sequence[int], exponents: Sequence[int]) -> int:
    """prod bases[k]^exponents[k] mod p, by Pippenger's bucket method: one pass of squarings
    shared by all bases, instead of one square-and-multiply per base."""
    bits = max((e.bit_length() for e in exponents), default=0)
    if bits == 0:
        return 1
    # the window that minimises (bits / c) * (len + 2^(c+1)) multiplications
    c = min(range(1, 11), key=lambda w: ((bits + w - 1) // w) * (len(bases) + (2 << w)))
    mask = (1 << c) - 1
    result = 1
    for window in reversed(range((bits + c - 1) // c)):
        if result != 1:
            for _ in range(c):
                result = result * result % P
        buckets = [1] * (mask + 1)
        shift = window * c
        for k, base in enumerate(bases):
            digit = (exponents[k] >> shift) & mask
            if digit:
                b = buckets[digit]
                buckets[digit] = base if b == 1 else b * base % P
        acc = _sum_buckets(buckets)
        if acc != 1:
            result = result * acc % P
    return result


def verify_shares_batch(shares: Sequence[Share], commitments: Sequence[int]) -> bool:
    """True when every share lies on the committed polynomial (with error probability
    below 2^-128): one randomised check for the whole batch,
        g^(sum r_i v_i) == prod_j C_j^(sum_i r_i i^j),
    far cheaper than one verify_share per share for many shares. False says only that at
    least one share is bad: check them one by one to find which."""
    if not commitments or any(not 1 < c < P for c in commitments):
        return False
    if any(not 1 <= i < Q or not 0 <= v < Q for i, v in shares):
        return False
    if not shares:
        return True
    weights = [secrets.randbits(128) | 1 for _ in shares]
    left = sum(weights[k] * v for k, (_, v) in enumerate(shares)) % Q
    exponents = [0] * len(commitments)
    for k, (i, _) in enumerate(shares):
        term = weights[k]
        for j in range(len(commitments)):
            exponents[j] += term
            term = term * i % Q
    return pow_g(left) == _multi_pow(commitments, [e % Q for e in exponents])


def combine(shares: Sequence[Share]) -> int:
    """The secret: Lagrange interpolation of the shares at 0, mod q."""
    if not shares:
        raise ValueError("no shares to combine")
    xs = [x for x, _ in shares]
    if len(set(xs)) != len(xs):
        raise ValueError("two shares have the same index")
    if any(not 1 <= x < Q for x in xs):
        raise ValueError("a share index is out of range")
    secret = 0
    for i, (xi, yi) in enumerate(shares):
        num = 1
        den = 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % Q
                den = den * (xj - xi) % Q
        secret = (secret + yi * num * pow(den, -1, Q)) % Q
    return secret


def check_secret(secret: int, commitments: Sequence[int]) -> bool:
    """True when `secret` is the one committed to (g^secret == C_0)."""
    return bool(commitments) and 0 <= secret < Q and pow_g(secret) == commitments[0]


def fingerprint(secret: int) -> str:
    """`SHA256:` and the hex SHA-256 of the 32-byte big-endian secret (safe to show)."""
    return "SHA256:" + hashlib.sha256(secret.to_bytes(SECRET_BYTES, "big")).hexdigest()


def share_document(
    deployment: str,
    threshold: int,
    total: int,
    index: int,
    value: int,
    commitments: Sequence[Union[int, str]],
) -> Dict[str, Any]:
    """The JSON document of one share file (version 1). `commitments` are ints, or their hex
    strings already formatted (for many servers, format them once)."""
    return {
        "version": VERSION,
        "deployment": deployment,
        "threshold": threshold,
        "total": total,
        "index": index,
        "share": format(value, "x"),
        "verifier": {
            "group": GROUP,
            "generator": G,
            "commitments": [c if isinstance(c, str) else format(c, "x") for c in commitments],
        },
    }


def verifier_file(deployment: str, threshold: int, commitments: Sequence[Union[int, str]]) -> bytes:
    """The deployment-wide verifier file (`verifier.json`): the commitments once, for every
    server, instead of a copy in each share file (at 1000 servers that copy was 256 KiB each)."""
    doc = {
        "version": VERSION_SEPARATE,
        "deployment": deployment,
        "threshold": threshold,
        "group": GROUP,
        "generator": G,
        "commitments": [c if isinstance(c, str) else format(c, "x") for c in commitments],
    }
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


def separate_share_document(
    deployment: str, threshold: int, total: int, index: int, value: int, verifier_sha256: str
) -> Dict[str, Any]:
    """The JSON document of one share file (version 2) that names the verifier file beside
    it and pins it by SHA-256 (of `verifier_file`'s bytes, computed once for all shares):
    the share is only ever checked against those exact bytes."""
    return {
        "version": VERSION_SEPARATE,
        "deployment": deployment,
        "threshold": threshold,
        "total": total,
        "index": index,
        "share": format(value, "x"),
        "verifier": {"file": VERIFIER_FILE, "sha256": verifier_sha256},
    }


def _int_field(doc: Dict[str, Any], key: str, where: str) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("%s: %s: expected an integer" % (where, key))
    return value


def _hex_field(value: Any, key: str, where: str, bound: int) -> int:
    # The message names the field only: the value may be a share.
    if not isinstance(value, str) or not value or len(value) > 1024:
        raise ValueError("%s: %s: expected a hexadecimal string" % (where, key))
    try:
        number = int(value, 16)
    except ValueError:
        raise ValueError("%s: %s: expected a hexadecimal string" % (where, key)) from None
    if not 0 <= number < bound:
        raise ValueError("%s: %s: out of range for group %s" % (where, key, GROUP))
    return number


# parsed verifier files (deployment, threshold, commitments), by the SHA-256 of their bytes
_VERIFIERS: Dict[str, Tuple[Any, Any, List[int]]] = {}


def _commitments(raw: Any, threshold: int, where: str, key: str) -> List[int]:
    if not isinstance(raw, list) or len(raw) != threshold:
        raise ValueError("%s: %s: expected %d of them" % (where, key, threshold))
    return [_hex_field(c, "%s.%d" % (key, k), where, P) for k, c in enumerate(raw)]


def _group_fields(doc: Dict[str, Any], where: str, prefix: str) -> None:
    if doc.get("group") != GROUP:
        raise ValueError("%s: %sgroup: expected %s" % (where, prefix, GROUP))
    if doc.get("generator") != G:
        raise ValueError("%s: %sgenerator: expected %d" % (where, prefix, G))


def _separate_verifier(
    ref: Any, deployment: str, threshold: int, where: str, read: Callable[[str], bytes]
) -> List[int]:
    """The commitments of a version 2 share: its verifier file, read by `read(name)`, must
    have the SHA-256 the share names and be of the same deployment and threshold."""
    if not isinstance(ref, dict):
        raise ValueError("%s: verifier: expected an object" % where)
    name, digest = ref.get("file"), ref.get("sha256")
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
        raise ValueError("%s: verifier.file: expected a file name" % where)
    if not isinstance(digest, str) or len(digest) != 64 or digest.strip("0123456789abcdef"):
        raise ValueError("%s: verifier.sha256: expected 64 hex digits" % where)
    data = read(name)
    if hashlib.sha256(data).hexdigest() != digest:
        raise ValueError("%s: verifier.sha256: %s is not the verifier this share was made with" % (where, name))
    cached = _VERIFIERS.get(digest)
    if cached is None:
        try:
            doc = json.loads(data.decode("utf-8"))
        except ValueError:
            raise ValueError("%s: %s: not valid JSON" % (where, name)) from None
        if not isinstance(doc, dict) or doc.get("version") != VERSION_SEPARATE:
            raise ValueError("%s: %s: version: expected %d" % (where, name, VERSION_SEPARATE))
        _group_fields(doc, where, name + ": ")
        raw = doc.get("commitments")
        if not isinstance(raw, list) or not raw:
            raise ValueError("%s: %s: commitments: expected a list" % (where, name))
        cached = (
            doc.get("deployment"),
            doc.get("threshold"),
            _commitments(raw, len(raw), where, name + ": commitments"),
        )
        _VERIFIERS.clear()  # callers read one deployment's verifier, over and over
        _VERIFIERS[digest] = cached
    if cached[0] != deployment or cached[1] != threshold or len(cached[2]) != threshold:
        raise ValueError("%s: %s: another deployment or threshold than the share's" % (where, name))
    return cached[2]


Verifier = TypedDict("Verifier", {"group": str, "generator": int, "commitments": List[int]})


class ParsedShare(TypedDict):
    """A share document as `parse_share` returns it: checked, the share and the commitments
    as ints, whichever version the file was."""

    version: int
    deployment: str
    threshold: int
    total: int
    index: int
    share: int
    verifier: Verifier


def parse_share(doc: Any, where: str = "share", read_verifier: Optional[Callable[[str], bytes]] = None) -> ParsedShare:
    """Validate a share document; returns it with "share" and the commitments as ints (in
    the version 1 shape, whichever version it was). A version 2 share reads its verifier
    file through `read_verifier(name)`."""
    if not isinstance(doc, dict):
        raise ValueError("%s: expected a JSON object" % where)
    version = doc.get("version")
    if version not in (VERSION, VERSION_SEPARATE) or isinstance(version, bool):
        raise ValueError("%s: version: expected %d or %d" % (where, VERSION, VERSION_SEPARATE))
    deployment = doc.get("deployment")
    if not isinstance(deployment, str) or not deployment:
        raise ValueError("%s: deployment: expected a name" % where)
    threshold = _int_field(doc, "threshold", where)
    total = _int_field(doc, "total", where)
    index = _int_field(doc, "index", where)
    if not 1 <= threshold <= total:
        raise ValueError("%s: threshold: must be between 1 and total (%d)" % (where, total))
    if not 1 <= index <= total:
        raise ValueError("%s: index: must be between 1 and total (%d)" % (where, total))
    value = _hex_field(doc.get("share"), "share", where, Q)
    verifier = doc.get("verifier")
    if version == VERSION_SEPARATE:
        if read_verifier is None:
            raise ValueError("%s: verifier: a separate verifier file, and no way to read it" % where)
        commitments = _separate_verifier(verifier, deployment, threshold, where, read_verifier)
    else:
        if not isinstance(verifier, dict):
            raise ValueError("%s: verifier: expected an object" % where)
        _group_fields(verifier, where, "verifier.")
        commitments = _commitments(verifier.get("commitments"), threshold, where, "verifier.commitments")
    return {
        "version": VERSION,
        "deployment": deployment,
        "threshold": threshold,
        "total": total,
        "index": index,
        "share": value,
        "verifier": {"group": GROUP, "generator": G, "commitments": commitments},
    }


def load_share(path: str) -> ParsedShare:
    """Read and validate a share file (and the verifier file beside it, for version 2);
    ValueError (naming the file, never the value) if bad."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(1 << 22)
    except OSError as e:
        raise ValueError("%s: cannot read: %s" % (path, e.strerror or e)) from None
    try:
        doc = json.loads(text)
    except ValueError as e:
        # json's message quotes no document content, only a position.
        raise ValueError("%s: not valid JSON (line %d)" % (path, getattr(e, "lineno", 0))) from None

    def read_verifier(name: str) -> bytes:
        beside = os.path.join(os.path.dirname(path), name)
        try:
            with open(beside, "rb") as f:
                return f.read(1 << 24)
        except OSError as e:
            raise ValueError("%s: verifier: cannot read %s: %s" % (path, beside, e.strerror or e)) from None

    return parse_share(doc, str(path), read_verifier)


def main(argv: Sequence[str]) -> int:
    """This file run as a worker (`--pow-g`) by `_commit_in_workers`."""
    if list(argv[1:]) == ["--pow-g"]:
        return _pow_g_worker()
    sys.stderr.write("usage: shamir.py --pow-g (a worker of the split)\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
