"""Load LoCoMo conversation files and turn them into memories and questions.

The memories are built exactly as a client would write them through the gateway's
memory API: one memory per turn, ``text = "<speaker>: <text>"`` plus
``" [shares <blip_caption>]"`` when the turn shared an image, ``metadata =
{"dia_id": ...}``, ``timestamp`` = the session's date and time, ``session_id`` =
``"<conversation>/session_<n>"``. Nothing here is copied into the project: every
function takes the path of a LoCoMo JSON file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}

_DATE_RE = re.compile(
    r"^\s*(\d{1,2}):(\d{2})\s*([ap]m)\s+on\s+(\d{1,2})\s+([A-Za-z]+),?\s+(\d{4})\s*$", re.I
)
_MONTHS = {
    m: i
    for i, m in enumerate(
        [
            "january",
            "february",
            "march",
            "april",
            "may",
            "june",
            "july",
            "august",
            "september",
            "october",
            "november",
            "december",
        ],
        start=1,
    )
}


def parse_locomo_datetime(text: str) -> datetime:
    """Parse LoCoMo's session stamps, e.g. ``"1:56 pm on 8 May, 2023"``."""
    m = _DATE_RE.match(text)
    if not m:
        raise ValueError(f"unrecognised LoCoMo date-time: {text!r}")
    hour, minute, ampm, day, month, year = m.groups()
    h = int(hour) % 12 + (12 if ampm.lower() == "pm" else 0)
    return datetime(int(year), _MONTHS[month.lower()], int(day), h, int(minute))


@dataclass
class Memory:
    dia_id: str
    speaker: str
    text: str  # what the client sends as `text`
    raw_text: str
    caption: str | None
    session: int  # 1-based session number
    index: int  # position of the turn inside its session
    timestamp: datetime
    session_id: str


@dataclass
class Question:
    question: str
    answer: str
    category: int
    evidence: list[str]


@dataclass
class Conversation:
    name: str
    speakers: tuple[str, str]
    memories: list[Memory] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)


def memory_text(turn: dict) -> str:
    text = f"{turn['speaker']}: {turn['text']}"
    caption = turn.get("blip_caption")
    if caption:
        text += f" [shares {caption}]"
    return text


def _split_evidence(evidence: list[str]) -> list[str]:
    out: list[str] = []
    for e in evidence:
        for part in re.split(r"[;,]", e):
            part = part.strip()
            if part:
                out.append(part)
    return out


def load_conversation(path: str | Path) -> Conversation:
    path = Path(path)
    d = json.loads(path.read_text())
    conv = d.get("conversation", d)  # the upstream locomo10.json nests it
    name = str(d.get("sample_id") or path.stem)
    out = Conversation(name=name, speakers=(conv["speaker_a"], conv["speaker_b"]))
    n_sessions = sorted(int(k.split("_")[1]) for k in conv if re.fullmatch(r"session_\d+", k))
    for n in n_sessions:
        turns = conv[f"session_{n}"]
        if not turns:
            continue
        ts = parse_locomo_datetime(conv[f"session_{n}_date_time"])
        for i, t in enumerate(turns):
            out.memories.append(
                Memory(
                    dia_id=t["dia_id"],
                    speaker=t["speaker"],
                    text=memory_text(t),
                    raw_text=t["text"],
                    caption=t.get("blip_caption") or None,
                    session=n,
                    index=i,
                    timestamp=ts,
                    session_id=f"{name}/session_{n}",
                )
            )
    for q in d["qa"]:
        cat = q.get("category")
        ev = _split_evidence(q.get("evidence") or [])
        if cat in CATEGORIES and ev:
            out.questions.append(
                Question(
                    question=q["question"],
                    answer=str(q.get("answer", "")),
                    category=cat,
                    evidence=ev,
                )
            )
    return out


def load_conversations(paths: list[str | Path]) -> list[Conversation]:
    """Load several LoCoMo files; a file holding a list (locomo10.json) yields each sample."""
    convs: list[Conversation] = []
    for p in paths:
        p = Path(p)
        data = json.loads(p.read_text())
        if isinstance(data, list):
            import tempfile

            for i, sample in enumerate(data):
                with tempfile.NamedTemporaryFile("w", suffix=".json", delete=True) as f:
                    json.dump(sample, f)
                    f.flush()
                    c = load_conversation(f.name)
                c.name = str(sample.get("sample_id") or f"{p.stem}-{i}")
                for m in c.memories:
                    m.session_id = f"{c.name}/session_{m.session}"
                convs.append(c)
        else:
            convs.append(load_conversation(p))
    return convs
