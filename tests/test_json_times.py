"""Every --json output is JSON with ISO 8601 times: queue list --corrupt, silence list, probe."""

from __future__ import annotations

import datetime as dt
import json

from tests.test_queue import invoke, write_config
from tests.test_queue_damage import contents, fill, run, segment


def iso(text: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(text)
    assert when.tzinfo is not None, text
    return when


def test_queue_list_corrupt_json_is_json_before_and_after_the_damage_is_set_aside(tmp_path):
    config = write_config(tmp_path)
    folder = tmp_path / "var" / "queue"
    run(fill(folder))
    seg = segment(folder)
    seg.write_bytes(seg.read_bytes()[:-40])

    out = invoke("queue", "list", "--corrupt", "--json", "-c", config)
    assert out.exit_code == 0, out.output
    [found] = json.loads(out.output)
    assert found["file"] == seg.name and found["set_aside"] is False and found["damage"]
    iso(found["changed"])

    run(contents(folder))  # a start sets it aside in corrupt/
    out = invoke("queue", "list", "--corrupt", "--json", "-c", config)
    items = json.loads(out.output)
    assert any(i["set_aside"] and seg.stem in i["file"] for i in items), items
    assert all(i["bytes"] > 0 and iso(i["changed"]) for i in items)


def test_queue_list_corrupt_json_of_a_sound_queue_is_an_empty_list(tmp_path):
    config = write_config(tmp_path)
    out = invoke("queue", "list", "--corrupt", "--json", "-c", config)
    assert out.exit_code == 0 and json.loads(out.output) == []


def test_silence_list_json_gives_start_and_end_in_iso_8601(tmp_path):
    config = write_config(tmp_path)
    added = invoke("silence", "add", "-c", config, "--rule", "disk-*", "--for", "2h")
    assert added.exit_code == 0, added.output
    out = invoke("silence", "list", "--json", "-c", config)
    [row] = json.loads(out.output)
    starts, ends = iso(row["starts"]), iso(row["ends"])
    assert dt.timedelta(hours=1, minutes=59) <= ends - starts <= dt.timedelta(hours=2, minutes=1)


def test_probe_json_gives_sample_times_in_iso_8601(tmp_path):
    config = write_config(tmp_path)
    out = invoke("probe", "--json", "-c", config)
    doc = json.loads(out.output)
    stamps = [s["timestamp"] for p in doc["probes"] for s in p["samples"]]
    assert stamps
    now = dt.datetime.now(dt.UTC)
    for stamp in stamps:
        assert abs(iso(stamp) - now) < dt.timedelta(minutes=5)
