"""docs/PROTOCOL.md: every JSON example validates against the models, and every request type is shown."""

from __future__ import annotations

import json
import re
from pathlib import Path

from utuvox.protocol.schema import CLIENT_FRAME, REQUEST_TYPES, SERVER_BY_TYPE, SERVER_FRAME

DOC = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"


def examples() -> list[dict]:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    return [json.loads(line) for block in blocks for line in block.splitlines() if line.strip()]


def test_every_example_validates() -> None:
    frames = examples()
    assert len(frames) > 40
    for frame in frames:
        data = json.dumps(frame)
        if frame["type"] in SERVER_BY_TYPE and ("re" in frame or "ts" in frame or frame["type"] not in
                                                 {m.model_fields["type"].default for m in REQUEST_TYPES}):
            SERVER_FRAME.validate_json(data)
        else:
            CLIENT_FRAME.validate_json(data)


def test_every_request_type_has_an_example() -> None:
    shown = {f["type"] for f in examples()}
    missing = {m.model_fields["type"].default for m in REQUEST_TYPES} - shown
    assert not missing, f"docs/PROTOCOL.md lacks examples of {sorted(missing)}"
