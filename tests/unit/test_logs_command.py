"""`flinger logs`: the line each server runs, by its service manager (no host contacted)."""

from __future__ import annotations

from flinger.actions.logs import LogQuery, log_command
from flinger.protocol.plans import ServiceSpec


def spec(name: str, manager: str, log_files: list[str] | None = None) -> ServiceSpec:
    return ServiceSpec(name, manager, {}, log_files=log_files or [])


def test_systemd_reads_the_journal_of_each_unit() -> None:
    line = log_command([spec("hello", "systemd"), spec("db", "systemd")], LogQuery(None, 20, "1 hour ago", True))
    assert line == (
        "journalctl --no-pager --output short-iso --lines 20 --since '1 hour ago' --follow "
        "--unit hello.service --unit db.service"
    )


def test_runit_tails_its_svlogd_log_and_a_log_file_wins() -> None:
    assert log_command([spec("hello", "runit")], LogQuery("hello", 5)) == "tail -n 5 /etc/sv/hello/log/main/current"
    line = log_command([spec("hello", "runit", ["/var/log/hello.log"])], LogQuery("hello", 5, follow=True))
    assert line == "tail -n 5 -F /var/log/hello.log"


def test_smf_asks_svcs_where_its_log_is() -> None:
    line = log_command([spec("hello", "smf")], LogQuery(None, 7))
    assert line == 'tail -n 7 "$(svcs -L svc:/site/hello:default)"'


def test_a_value_that_reaches_the_shell_is_quoted() -> None:
    line = log_command([spec("hello", "systemd")], LogQuery(None, 1, "today'; rm -rf /; '"))
    assert "'today'\"'\"'; rm -rf /; '\"'\"''" in line
