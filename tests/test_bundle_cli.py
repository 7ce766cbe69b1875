"""``potluck bundle have|export|import`` end to end, through the real command: a
second node catches up from a file, the JSON documents keep their documented fields,
and a bundle of another group is refused in one line with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from helpers import potluck
from test_cli import as_json, last_line, new_id


def init(data_dir: Path, name: str, *group: str) -> None:
    potluck(data_dir, "init", "--name", name, *group)


def bundle_json(data_dir: Path, *args: str) -> Any:
    data = json.loads(potluck(data_dir, "bundle", *args, "--json").stdout)
    assert isinstance(data, dict)
    return data


def test_a_node_catches_up_from_a_bundle_with_only_what_it_lacks(tmp_path: Path) -> None:
    ana, bo = tmp_path / "ana", tmp_path / "bo"
    init(ana, "Ana", "--new-group", "Riverside pantry")
    potluck(ana, "location", "add", "pantry", "Church pantry")
    potluck(ana, "item", "add", "beans", "Tins of beans", "--unit", "tin")
    code = last_line(potluck(ana, "invite"))
    init(bo, "Bo", "--join", code)

    first = bundle_json(ana, "export", str(tmp_path / "all.potluck"))
    assert set(first) == {"file", "events", "bytes", "authors", "evidence"}
    assert (first["events"], first["authors"], first["evidence"]) == (3, 1, 0)
    imported = bundle_json(bo, "import", str(tmp_path / "all.potluck"))
    assert set(imported) == {
        "file",
        "stored",
        "duplicates",
        "held",
        "rejected",
        "reasons",
        "forks",
        "evidence",
    }
    assert (imported["stored"], imported["rejected"], imported["forks"]) == (3, 0, [])

    offer = new_id(
        ana,
        "offer",
        "post",
        "Tins of beans",
        "--item",
        "beans",
        "--quantity",
        "10",
        "--location",
        "pantry",
    )
    potluck(bo, "bundle", "have", str(tmp_path / "bo.vector"))
    since = bundle_json(
        ana, "export", str(tmp_path / "new.potluck"), "--since", str(tmp_path / "bo.vector")
    )
    assert since["events"] == 1  # only the offer: Bo has the rest
    text = potluck(bo, "bundle", "import", str(tmp_path / "new.potluck")).stdout
    assert text.startswith("Imported 1 new events")
    assert [o["id"] for o in as_json(bo, "board")["offers"]] == [offer]
    # and the other way, so that Ana learns Bo joined: then both show the same
    potluck(ana, "bundle", "have", str(tmp_path / "ana.vector"))
    back = bundle_json(
        bo, "export", str(tmp_path / "back.potluck"), "--since", str(tmp_path / "ana.vector")
    )
    assert back["events"] == 1  # Bo's member.joined
    assert bundle_json(ana, "import", str(tmp_path / "back.potluck"))["stored"] == 1
    assert last_line(potluck(bo, "digest")) == last_line(potluck(ana, "digest"))


def test_a_bundle_of_another_group_is_refused_in_one_line(tmp_path: Path) -> None:
    ana, cy = tmp_path / "ana", tmp_path / "cy"
    init(ana, "Ana", "--new-group", "Riverside pantry")
    init(cy, "Cy", "--new-group", "Hilltop kitchen")
    potluck(ana, "bundle", "export", str(tmp_path / "ana.potluck"))
    before = last_line(potluck(cy, "digest"))
    proc = potluck(cy, "bundle", "import", str(tmp_path / "ana.potluck"), ok=False)
    assert proc.returncode != 0 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "belongs to another group" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert last_line(potluck(cy, "digest")) == before


def test_a_bundle_carries_the_proof_of_a_fork_to_a_node_that_saw_one_version(
    tmp_path: Path,
) -> None:
    """Ana's laptop and a restored copy of it both post as Ana's seq 2. Carol sees both
    versions; Dan only ever sees one, by bundle. Carol's bundle carries the proof, and
    Dan's board then leaves Ana's doubled event out, as Carol's does."""
    ana, twin, carol, dan = (tmp_path / n for n in ("ana", "twin", "carol", "dan"))
    init(ana, "Ana", "--new-group", "Riverside pantry")
    code = last_line(potluck(ana, "invite"))
    init(carol, "Carol", "--join", code)
    init(dan, "Dan", "--join", code)
    shutil.copytree(ana, twin)  # the same device key, restored from a backup
    potluck(ana, "offer", "post", "Soup for ten")
    potluck(twin, "offer", "post", "Bread for six")

    potluck(ana, "bundle", "export", str(tmp_path / "ana.potluck"))
    potluck(twin, "bundle", "export", str(tmp_path / "twin.potluck"))
    assert bundle_json(carol, "import", str(tmp_path / "ana.potluck"))["stored"] == 2
    forked = bundle_json(carol, "import", str(tmp_path / "twin.potluck"))
    assert len(forked["forks"]) == 1 and forked["forks"][0][1] == 2
    assert as_json(carol, "board")["offers"] == []

    bundle_json(dan, "import", str(tmp_path / "ana.potluck"))
    assert [o["title"] for o in as_json(dan, "board")["offers"]] == ["Soup for ten"]
    proof = bundle_json(carol, "export", str(tmp_path / "carol.potluck"))
    assert proof["evidence"] == 1
    taken = bundle_json(dan, "import", str(tmp_path / "carol.potluck"))
    assert (taken["evidence"], taken["forks"]) == (1, forked["forks"])
    assert as_json(dan, "board")["offers"] == []
    text = potluck(dan, "bundle", "import", str(tmp_path / "carol.potluck")).stdout
    assert "two versions" not in text  # the second time, nothing new to prove
