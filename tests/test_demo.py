"""scripts/demo.py's scheduler: steps start only after what they need, run side by side, and a failure stops the
launch of new steps without killing the running ones."""

import sys

import pytest

from tests.conftest import load_script


@pytest.fixture
def demo(tmp_path, monkeypatch):
    module = load_script("demo")
    monkeypatch.setattr(module, "LOGS", tmp_path / "logs")
    return module


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_steps_wait_for_what_they_need_and_report_rows(demo, tmp_path):
    made = tmp_path / "made.txt"
    plan = [
        demo.Step("slow", python(f"import time; time.sleep(1); open({str(made)!r}, 'w').write('7')")),
        demo.Step("user", python(f"print(open({str(made)!r}).read())"), ("slow",),
                  lambda out: [("user", "read", float(out))]),
        demo.Step("side", python("print('side')"), rows=lambda out: [("side", "said", out.strip())]),
    ]
    rows, walls, failed = demo.run_all(plan, jobs=2)
    assert failed == []
    assert set(walls) == {"slow", "user", "side"}
    assert ("user", "read", 7.0) == rows[[r[0] for r in rows].index("user")][:3]
    assert ("side", "said", "side") in [r[:3] for r in rows]


def test_a_failure_stops_new_launches_and_names_what_did_not_run(demo, tmp_path):
    plan = [
        demo.Step("bad", python("import sys; print('boom', file=sys.stderr); sys.exit(3)")),
        demo.Step("running", python("import time; time.sleep(1.5); print('finished')"),
                  rows=lambda out: [("running", "out", out.strip())]),
        demo.Step("after", python("print('should not run')"), ("bad",)),
    ]
    rows, walls, failed = demo.run_all(plan, jobs=2)
    assert failed[0] == "bad" and failed[1].startswith("after (not started: needs bad")
    assert [r[:3] for r in rows] == [("running", "out", "finished")]  # the running step was let finish
    assert "after" not in walls and "boom" in (tmp_path / "logs" / "bad.log").read_text()


def test_only_selects_whole_words_and_drops_needs_outside_the_selection(demo):
    names = [s.name for s in demo.selected(demo.steps(), {"e", "export"})]
    assert names == ["E sft", "export"]
    export = next(s for s in demo.selected(demo.steps(), {"e", "export"}) if s.name == "export")
    assert export.needs == ("E sft",)
    assert {s.name for s in demo.selected(demo.steps(), {"speech"})} == {"data speech", "data tts", "D talker",
                                                                          "vocoder", "D TTS>ASR"}
