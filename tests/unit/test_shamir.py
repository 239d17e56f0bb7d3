"""Shamir sharing with Feldman commitments (flinger/remote/shamir.py): the group, recovery from
any threshold of shares, verification, the share file format and the verify-share command."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flinger.remote import shamir

REPO = Path(__file__).resolve().parents[2]


def _probably_prime(n: int, rounds: int = 8) -> bool:
    rng = random.Random(1)
    d, r = n - 1, 0
    while d % 2 == 0:
        d //= 2
        r += 1
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 2), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def test_group_is_a_safe_prime_and_g_generates_the_order_q_subgroup() -> None:
    assert shamir.P.bit_length() == 2048
    assert shamir.P == 2 * shamir.Q + 1
    assert _probably_prime(shamir.P) and _probably_prime(shamir.Q)
    assert shamir.P % 8 == 7  # why 2 is a quadratic residue
    assert pow(shamir.G, shamir.Q, shamir.P) == 1 and shamir.G != 1


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=0, max_value=shamir.Q - 1))
def test_fixed_base_power_matches_pow(e: int) -> None:
    assert shamir.pow_g(e) == pow(shamir.G, e, shamir.P)


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_any_t_of_n_shares_recover_the_secret(data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=1, max_value=64), label="n")
    t = data.draw(st.integers(min_value=1, max_value=n), label="t")
    secret = data.draw(st.integers(min_value=0, max_value=2**256 - 1), label="secret")
    commitments, shares = shamir.split(secret, n, t)
    assert len(commitments) == t and [i for i, _ in shares] == list(range(1, n + 1))
    subset = data.draw(st.permutations(shares), label="order")[:t]
    assert shamir.combine(subset) == secret
    assert shamir.check_secret(secret, commitments)
    # more than t shares recover it too
    assert shamir.combine(shares) == secret


@settings(max_examples=20, deadline=None)
@given(st.data())
def test_t_minus_one_shares_do_not_recover_the_secret(data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=2, max_value=64), label="n")
    t = data.draw(st.integers(min_value=2, max_value=n), label="t")
    secret = data.draw(st.integers(min_value=0, max_value=2**256 - 1), label="secret")
    commitments, shares = shamir.split(secret, n, t)
    subset = data.draw(st.permutations(shares), label="order")[: t - 1]
    recovered = shamir.combine(subset)
    assert recovered != secret
    assert not shamir.check_secret(recovered, commitments)


@settings(max_examples=20, deadline=None)
@given(st.data())
def test_every_share_verifies_against_its_commitments(data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=1, max_value=24), label="n")
    t = data.draw(st.integers(min_value=1, max_value=n), label="t")
    commitments, shares = shamir.split(shamir.random_secret(), n, t)
    assert all(shamir.verify_share(i, v, commitments) for i, v in shares)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=16),
    pick=st.integers(min_value=0, max_value=15),
    byte=st.integers(min_value=0, max_value=255),
    flip=st.integers(min_value=1, max_value=255),
)
def test_a_share_altered_in_one_byte_fails_verification(n: int, pick: int, byte: int, flip: int) -> None:
    commitments, shares = shamir.split(shamir.random_secret(), n, n // 2 + 1)
    index, value = shares[pick % n]
    altered = value ^ (flip << (8 * (byte % 32)))
    assert altered != value
    assert not shamir.verify_share(index, altered, commitments)
    # the same value presented under another index fails as well
    assert not shamir.verify_share(index % n + 1, value, commitments)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(min_value=2, max_value=12))
def test_one_deployments_verifier_rejects_anothers_share(n: int) -> None:
    t = n // 2 + 1
    commitments_a, shares_a = shamir.split(shamir.random_secret(), n, t)
    commitments_b, shares_b = shamir.split(shamir.random_secret(), n, t)
    assert not any(shamir.verify_share(i, v, commitments_a) for i, v in shares_b)
    assert not any(shamir.verify_share(i, v, commitments_b) for i, v in shares_a)


def test_split_and_combine_refuse_bad_arguments() -> None:
    with pytest.raises(ValueError):
        shamir.split(1, 3, 4)
    with pytest.raises(ValueError):
        shamir.split(1, 3, 0)
    with pytest.raises(ValueError):
        shamir.split(shamir.Q, 3, 2)
    with pytest.raises(ValueError):
        shamir.combine([(1, 5), (1, 6)])
    with pytest.raises(ValueError):
        shamir.combine([])
    assert not shamir.verify_share(0, 1, [4])
    assert not shamir.verify_share(1, shamir.Q, [4])
    assert not shamir.verify_share(1, 1, [])


def test_fingerprint_is_sha256_of_the_32_byte_secret() -> None:
    import hashlib

    assert shamir.fingerprint(1) == "SHA256:" + hashlib.sha256(b"\0" * 31 + b"\1").hexdigest()


def _write_shares(tmp: Path, deployment: str, n: int, t: int, secret: int, *, separate: bool = False) -> list[Path]:
    """Share files of version 1 (the commitments inside), or with `separate` of version 2:
    one verifier.json beside them for all, each share pinning it by SHA-256."""
    commitments, shares = shamir.split(secret, n, t)
    if separate:
        verifier = shamir.verifier_file(deployment, t, commitments)
        (tmp / "verifier.json").write_bytes(verifier)
        digest = hashlib.sha256(verifier).hexdigest()
    paths = []
    for i, v in shares:
        p = tmp / f"{deployment}-{i}.json"
        doc = (shamir.separate_share_document(deployment, t, n, i, v, digest) if separate
               else shamir.share_document(deployment, t, n, i, v, commitments))  # fmt: skip
        p.write_text(json.dumps(doc))
        paths.append(p)
    return paths


def test_share_document_round_trips_through_load_share(tmp_path: Path) -> None:
    secret = shamir.random_secret()
    paths = _write_shares(tmp_path, "demo", 3, 2, secret)
    raw = json.loads(paths[0].read_text())
    assert raw["version"] == 1 and raw["verifier"]["group"] == "rfc3526-2048"
    assert raw["verifier"]["generator"] == shamir.G
    doc = shamir.load_share(str(paths[0]))
    assert doc["index"] == 1 and doc["threshold"] == 2 and doc["total"] == 3
    assert shamir.verify_share(doc["index"], doc["share"], doc["verifier"]["commitments"])
    other = shamir.load_share(str(paths[2]))
    assert shamir.combine([(1, doc["share"]), (3, other["share"])]) == secret


@pytest.mark.parametrize(
    ("field", "value", "expect"),
    [
        ("version", 3, "version"),
        ("threshold", 9, "threshold"),
        ("threshold", True, "threshold"),
        ("index", 0, "index"),
        ("share", "zz-not-hex", "share"),
        ("share", "f" * 600, "share: out of range"),
        ("deployment", "", "deployment"),
    ],
)
def test_load_share_names_the_file_and_field_but_never_the_value(
    tmp_path: Path, field: str, value: object, expect: str
) -> None:
    path = _write_shares(tmp_path, "demo", 3, 2, shamir.random_secret())[0]
    doc = json.loads(path.read_text())
    real_share = doc["share"]
    doc[field] = value
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError) as info:
        shamir.load_share(str(path))
    message = str(info.value)
    assert str(path) in message and expect in message
    assert real_share not in message
    if field == "share":
        assert str(value) not in message


def test_load_share_of_broken_json_says_so_without_content(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"share": "abcdef0123456789abcdef", oops')
    with pytest.raises(ValueError, match="not valid JSON") as info:
        shamir.load_share(str(path))
    assert "abcdef0123456789" not in str(info.value)


def test_parses_with_the_python_39_grammar() -> None:
    import ast

    source = (REPO / "flinger" / "remote" / "shamir.py").read_text()
    ast.parse(source, feature_version=(3, 9))


@settings(max_examples=15, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(min_value=2, max_value=shamir.P - 1), st.integers(min_value=0, max_value=shamir.Q - 1)),
        min_size=1,
        max_size=6,
    )
)
def test_multi_exponentiation_matches_pow(pairs: list[tuple[int, int]]) -> None:
    expected = 1
    for base, e in pairs:
        expected = expected * pow(base, e, shamir.P) % shamir.P
    assert shamir._multi_pow([b for b, _ in pairs], [e for _, e in pairs]) == expected


@settings(max_examples=12, deadline=None)
@given(st.data())
def test_batch_verification_accepts_good_shares_and_rejects_one_bad(data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=1, max_value=16), label="n")
    t = data.draw(st.integers(min_value=1, max_value=n), label="t")
    commitments, shares = shamir.split(shamir.random_secret(), n, t)
    assert shamir.verify_shares_batch(shares, commitments)
    k = data.draw(st.integers(min_value=0, max_value=n - 1), label="bad")
    delta = data.draw(st.integers(min_value=1, max_value=2**64), label="delta")
    bad = list(shares)
    bad[k] = (bad[k][0], (bad[k][1] + delta) % shamir.Q)
    assert not shamir.verify_shares_batch(bad, commitments)
    _, other = shamir.split(shamir.random_secret(), n, t)
    assert not shamir.verify_shares_batch(other, commitments)


def test_a_separate_verifier_file_loads_like_an_embedded_one(tmp_path: Path) -> None:
    secret = shamir.random_secret()
    paths = _write_shares(tmp_path, "demo", 5, 3, secret, separate=True)
    raw = json.loads(paths[0].read_text())
    assert raw["version"] == 2 and set(raw["verifier"]) == {"file", "sha256"}
    docs = [shamir.load_share(str(p)) for p in paths]
    assert all(shamir.verify_share(d["index"], d["share"], d["verifier"]["commitments"]) for d in docs)
    assert len(docs[0]["verifier"]["commitments"]) == 3
    assert shamir.combine([(d["index"], d["share"]) for d in docs[2:]]) == secret


def test_a_share_refuses_a_verifier_file_that_is_not_the_one_it_pins(tmp_path: Path) -> None:
    paths = _write_shares(tmp_path, "demo", 3, 2, shamir.random_secret(), separate=True)
    shamir.load_share(str(paths[0]))  # parsed once: the cache must not let a changed file through
    verifier = tmp_path / "verifier.json"
    doc = json.loads(verifier.read_text())
    doc["commitments"][0] = format(int(doc["commitments"][0], 16) ^ 2, "x")
    verifier.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="not the verifier this share was made with"):
        shamir.load_share(str(paths[0]))
    verifier.unlink()
    with pytest.raises(ValueError, match="cannot read"):
        shamir.load_share(str(paths[1]))


@pytest.mark.parametrize(
    ("field", "value", "expect"),
    [
        ("file", "../verifier.json", "verifier.file"),
        ("file", "", "verifier.file"),
        ("sha256", "zz", "verifier.sha256"),
        ("sha256", "0" * 64, "not the verifier"),
    ],
)
def test_a_share_names_its_verifier_only_as_a_file_beside_it(
    tmp_path: Path, field: str, value: str, expect: str
) -> None:
    path = _write_shares(tmp_path, "demo", 3, 2, shamir.random_secret(), separate=True)[0]
    doc = json.loads(path.read_text())
    doc["verifier"][field] = value
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=expect):
        shamir.load_share(str(path))


def test_a_verifier_of_another_threshold_is_refused_even_when_cached(tmp_path: Path) -> None:
    paths = _write_shares(tmp_path, "demo", 3, 2, shamir.random_secret(), separate=True)
    shamir.load_share(str(paths[0]))
    doc = json.loads(paths[1].read_text())
    doc["threshold"] = 3  # the pin still matches; the verifier says 2
    paths[1].write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="another deployment or threshold"):
        shamir.load_share(str(paths[1]))
