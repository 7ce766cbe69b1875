"""Files that hold the group secret or the log are this user's alone (security review,
finding 6; docs/reliability.md §files)."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from eventlog.errors import UsageError
from eventlog.identity import tighten

POTLUCK = [sys.executable, "-c", "from node.cli import main; main()"]


def potluck(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*POTLUCK, "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "100"},
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_data_directory_left_readable_by_others_is_tightened_when_the_node_opens(
    tmp_path: Path,
) -> None:
    data = tmp_path / "ana"
    assert potluck(data, "init", "--name", "Ana", "--new-group", "Eastside").returncode == 0
    # as an older Potluck, a backup restored by hand or a copy with cp -r leaves it
    data.chmod(0o755)
    for path in data.iterdir():
        path.chmod(0o644)
    proc = potluck(data, "board")
    assert proc.returncode == 0, proc.stderr
    assert mode(data) == 0o700
    loose = {p.name: oct(mode(p)) for p in data.iterdir() if p.is_file() and mode(p) & 0o077}
    assert loose == {}


def test_a_new_data_directory_and_its_files_are_this_users_alone(tmp_path: Path) -> None:
    data = tmp_path / "bo"
    assert potluck(data, "init", "--name", "Bo", "--new-group", "Eastside").returncode == 0
    assert potluck(data, "offer", "post", "Soup").returncode == 0
    assert mode(data) == 0o700
    assert {p.name: mode(p) & 0o077 for p in data.iterdir() if p.is_file()} == {
        p.name: 0 for p in data.iterdir() if p.is_file()
    }


def test_tighten_names_what_it_changed_and_leaves_a_tight_directory_alone(
    tmp_path: Path,
) -> None:
    (tmp_path / "log.db").write_bytes(b"")
    (tmp_path / "log.db").chmod(0o640)
    tmp_path.chmod(0o750)
    assert sorted(tighten(tmp_path)) == sorted([str(tmp_path), "log.db"])
    assert mode(tmp_path / "log.db") == 0o600
    assert tighten(tmp_path) == []


def test_a_loose_directory_that_cannot_be_changed_is_refused_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp_path.chmod(0o755)

    def not_yours(self: Path, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(Path, "chmod", not_yours)  # root may change any mode: act as a user
    with pytest.raises(UsageError, match=r"chmod -R go-rwx .*or use a data directory"):
        tighten(tmp_path)


def test_an_invite_qr_file_holding_the_secret_is_written_for_this_user_only(
    tmp_path: Path,
) -> None:
    data = tmp_path / "ana"
    assert potluck(data, "init", "--name", "Ana", "--new-group", "Eastside").returncode == 0
    picture = tmp_path / "invite.png"
    picture.write_bytes(b"an older, loose copy")
    picture.chmod(0o644)
    proc = potluck(data, "invite", "--qr-file", str(picture))
    assert proc.returncode == 0, proc.stderr
    assert picture.read_bytes().startswith(b"\x89PNG")
    assert mode(picture) == 0o600
    svg = tmp_path / "invite.svg"
    assert potluck(data, "invite", "--qr-file", str(svg)).returncode == 0
    assert b"<svg" in svg.read_bytes() and mode(svg) == 0o600
    refused = potluck(data, "invite", "--qr-file", str(tmp_path / "invite.docx"))
    assert refused.returncode == 2 and "name the file .png or .svg" in refused.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_web_login_token_stays_out_of_a_log_and_goes_to_a_private_file(
    tmp_path: Path,
) -> None:
    data = tmp_path / "ana"
    assert potluck(data, "init", "--name", "Ana", "--new-group", "Eastside").returncode == 0
    port = _free_port()
    serve = subprocess.Popen(
        [
            *POTLUCK,
            "--data-dir",
            str(data),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ui",
            f"0.0.0.0:{port}",
            "--no-discovery",
        ],
        stdout=subprocess.PIPE,  # as a service manager would: not a terminal
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert serve.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = serve.stdout.readline()
            lines.append(line)
            if "listening on" in line:  # the page is up by then
                break
        said = "".join(lines)
        assert "web page on" in said, said
        login = data / "web-login.txt"
        assert str(login) in said and "token=" not in said
        assert mode(login) == 0o600
        link = login.read_text().strip()
        assert re.fullmatch(rf"http://127\.0\.0\.1:{port}/\?token=[\w-]{{40,}}", link), link
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with browser.open(link, timeout=10) as page:  # the link really logs in
            assert page.status == 200
        with pytest.raises(urllib.error.HTTPError):  # and nothing opens without it
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(timeout=20)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
