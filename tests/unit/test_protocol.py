"""The typed contract between flinger and its remote tool (flinger/protocol): every plan and
result goes through JSON and back unchanged, both sides refuse a message of another version
(or none), a plan with a field of the wrong type, an unknown or a missing key, and no
credential shows in a repr. The remote tool's entry point is run in this process."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from flinger.protocol import graph, names, plans, results
from flinger.protocol.codec import ProtocolError, decode, encode
from flinger.protocol.messages import COMMANDS, VERSION, Event, parse_line, plan_line, read_plan, result_line
from flinger.remote.__main__ import HANDLERS
from flinger.remote.__main__ import run as remote_run


def example(cls: type) -> object:
    """A value of every field of `cls` (a dataclass), nested ones too: no default left."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        values[field.name] = _value(hints[field.name])
    return cls(**values)


def _value(kind: object) -> object:
    origin = typing.get_origin(kind)
    if origin is typing.Union:
        return _value(next(k for k in typing.get_args(kind) if k is not type(None)))
    if origin is list:
        return [_value(typing.get_args(kind)[0])]
    if origin is dict:
        return {"k": _value(typing.get_args(kind)[1])}
    if dataclasses.is_dataclass(kind):
        return example(kind)  # type: ignore[arg-type]
    return {bool: True, int: 7, float: 1.5, str: "text", typing.Any: {"free": 1}}[kind]  # type: ignore[index]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_plan_and_result_survives_the_wire(command: str) -> None:
    plan = example(COMMANDS[command].plan)
    assert read_plan(command, plan_line(command, plan).decode()) == plan
    result = example(COMMANDS[command].result)
    assert parse_line(command, result_line(result)) == result  # type: ignore[arg-type]


def test_every_command_has_a_handler_in_the_remote_tool() -> None:
    assert set(HANDLERS) == set(COMMANDS)


def test_events_are_the_clients_five_kinds() -> None:
    line = json.dumps(encode(Event("step", "unpack: app")))
    assert parse_line("install", line) == Event("step", "unpack: app")
    assert parse_line("install", '{"event": "blob", "x": 1}') is None  # no such kind: not an event
    assert parse_line("install", "plain text") is None


@pytest.mark.parametrize(
    ("message", "said"),
    [
        ({"command": "status", "plan": {"install_dir": "/opt/a"}}, "the plan has no version"),
        ({"version": VERSION - 1, "command": "status", "plan": {"install_dir": "/opt/a"}}, f"version {VERSION - 1}"),
        ({"version": VERSION, "command": "history", "plan": {"install_dir": "/opt/a"}}, "for 'history', not 'status'"),
        ({"version": VERSION, "command": "status", "plan": {}}, "plan: missing key 'install_dir'"),
        ({"version": VERSION, "command": "status", "plan": {"install_dir": 3}}, "plan.install_dir: expected a string"),
        ({"version": VERSION, "command": "status", "plan": {"install_dir": "/a", "x": 1}}, "unknown key 'x'"),
    ],
)
def test_the_tool_refuses_a_plan_that_is_not_one_of_its_version(
    message: dict[str, object], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert remote_run("status", json.dumps(message)) == 1
    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert last["event"] == "result" and last["version"] == VERSION and last["ok"] is False
    assert said in last["error"], last


def test_the_client_refuses_a_result_of_another_version() -> None:
    line = json.dumps({"event": "result", "version": VERSION + 1, "ok": True})
    with pytest.raises(ProtocolError, match=f"answered with version {VERSION + 1}"):
        parse_line("status", line)


def test_nested_fields_are_checked_and_named_by_their_path() -> None:
    bad = {"install_dir": "/o", "staging_dir": "/s", "release": "r", "lock_holder": "h",
           "services": [{"name": "a", "manager": "systemd", "files": {}, "health": {"timeout": "soon"}}]}  # fmt: skip
    with pytest.raises(ProtocolError, match=r"plan\.services\[0\]\.health\.timeout: expected a number, got a string"):
        decode(plans.InstallPlan, bad, "plan")


def test_a_receipt_of_another_version_is_read_without_its_unknown_keys() -> None:
    old = {"name": "q", "manager": "runit", "files": {"run": "x"}, "health": None, "gone": True}
    assert decode(plans.ServiceSpec, old, "receipt", strict=False) == plans.ServiceSpec("q", "runit", {"run": "x"})


def test_a_credential_never_shows_its_password() -> None:
    credential = plans.Credential("deploy", "hunter2")
    assert "hunter2" not in repr(credential) and "hunter2" not in repr(plans.PushPlan("/a", plans.RegistrySpec(
        "https://r", "x"), credential))  # fmt: skip


def test_the_one_name_rule() -> None:
    assert names.problem("node-1.a_b") is None
    for bad in ("", "-x", "a b", "a/b", "x" * 65, "é", "a@b"):
        assert names.problem(bad) is not None, bad


def test_the_one_topological_order_layers_and_finds_cycles() -> None:
    assert graph.layers({"web": ["db", "cache"], "db": [], "cache": [], "worker": ["web"]}) == [
        ["db", "cache"],
        ["web"],
        ["worker"],
    ]
    assert graph.depth({"b": ["a"]}) == {"a": 0, "b": 1}
    with pytest.raises(graph.Cycle, match=r"a -> b -> a|b -> a -> b"):
        graph.ordered({"a": ["b"], "b": ["a"]})


def test_results_say_ok_by_default_and_failures_name_their_step() -> None:
    assert results.InstallResult().ok is True
    failed = results.SwitchResult(ok=False, step="health:web", error="web is not healthy")
    assert parse_line("rollback", result_line(failed)) == failed
