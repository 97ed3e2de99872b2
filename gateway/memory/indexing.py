"""What gets indexed for a memory, beside its text: pure functions, no I/O.

On LoCoMo's development split this layout finds far more of the evidence
than dense retrieval over raw turns (docs/recall.md; every step tried:
bench/locomo/RESULTS.md). Each memory is indexed four ways, and a query fuses
all four with reciprocal-rank fusion (k=2):

- ``text``: the embedding of the memory's text as the client sent it;
- ``ctx``: the memory with the two before it in the same session, so a reply
  ("Yes, last Tuesday!") is found by what it answers: the three texts'
  vectors summed, weighted by word count (what mean pooling over the texts
  would give if each were encoded alone), the memory itself double
  (``compose``). No second encoder pass: a chat turn's memories cost one
  embedding each, and the user's one is the turn's query, embedded already.
  Offline its recall is within the noise of encoding the window text, for a
  fraction of the encoder's work (bench/results/index_study.md);
- ``bm25`` / ``bm25_ctx``: Qdrant's BM25 sparse vectors of ``"On <date>,
  <text>"`` and of the window's text (with IDF), for names, rare words and
  dates ("on 8 May 2023") that embeddings blur.

The stored ``memory`` text stays exactly what the client sent.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import blake2b
from math import sqrt

from gateway.memory.records import NewMemory, Scope

WINDOW = 2  # memories before this one that go into its context texts


def date_label(when: datetime) -> str:
    """``8 May 2023``: the form that matched questions best on LoCoMo."""
    when = when.astimezone(UTC)
    return f"{when.day} {when:%B %Y}"


@dataclass(frozen=True)
class IndexTexts:
    dense: str  # the one text the encoder sees: the memory's own
    sparse_text: str  # BM25 of the dated text
    sparse_context: str  # BM25 of the session window


def window_text(previous: Sequence[str], text: str) -> str:
    """The text of a memory's session window: its ``WINDOW`` predecessors and itself."""
    return " ".join([*previous[-WINDOW:], text])


def index_texts(memory: NewMemory, previous: Sequence[str]) -> IndexTexts:
    dated = f"On {date_label(memory.created_at)}, {memory.text}"
    return IndexTexts(memory.text, dated, window_text(previous, memory.text))


def weight(text: str) -> float:
    """A text's share of a composed window: its word count, the tokens' stand-in."""
    return float(max(1, len(text.split())))


OWN_WEIGHT = 2.0  # the memory itself, last of the parts, counts this much more


def compose(parts: Sequence[tuple[str, Sequence[float]]]) -> list[float]:
    """The unit vector of the texts' vectors summed, each weighted by ``weight``,
    the last (the memory itself) ``OWN_WEIGHT`` times more.

    Equal weights make the windows of a memory and of its successor equally
    close to the memory's own words, so searching a memory's exact text could
    rank its neighbour first when the session's texts are alike ("fact number
    9", "fact number 10"); counting the memory double breaks that tie its way.
    On LoCoMo it is within the noise (bench/results/index_study.md)."""
    text, vector = parts[0]
    w = weight(text) * (OWN_WEIGHT if len(parts) == 1 else 1.0)
    total = [w * x for x in vector]
    for i, (text, vector) in enumerate(parts[1:], start=2):
        w = weight(text) * (OWN_WEIGHT if i == len(parts) else 1.0)
        total = [t + w * x for t, x in zip(total, vector, strict=True)]
    norm = sqrt(sum(x * x for x in total)) or 1.0
    return [x / norm for x in total]


SessionKey = tuple[str, str, str]


def session_key(scope: Scope, session_id: str | None) -> SessionKey:
    """Memories without a session form one stream per user."""
    return (scope.tenant, scope.user_id, session_id or "")


# A memory of a session window: its text and, once known, its dense vector.
Recent = tuple[str, Sequence[float] | None]


class RecentTexts:
    """The last few memories written to each session, with their vectors, so a
    write rarely has to ask the store for its neighbours or the embedder for
    their vectors. Bounded LRU; a miss falls back to the store (texts only).

    Vectors are kept as float32 arrays (1.5 KiB at 384 dimensions) rather than
    lists of Python floats (about 12 KiB): with ten thousand sessions cached
    the difference is most of the gateway's memory. The store keeps float32
    too, so nothing is lost that a search would see."""

    def __init__(self, max_sessions: int = 10_000) -> None:
        self._sessions: OrderedDict[SessionKey, deque[Recent]] = OrderedDict()
        self._max_sessions = max_sessions

    def get(self, key: SessionKey) -> list[Recent] | None:
        texts = self._sessions.get(key)
        if texts is None:
            return None
        self._sessions.move_to_end(key)
        return list(texts)

    def put(self, key: SessionKey, texts: Sequence[Recent]) -> None:
        kept = [(t, None if v is None else array("f", v)) for t, v in texts[-WINDOW:]]
        self._sessions[key] = deque(kept, maxlen=WINDOW)
        self._sessions.move_to_end(key)
        while len(self._sessions) > self._max_sessions:
            self._sessions.popitem(last=False)

    def forget(self, tenant: str, user_id: str) -> None:
        for key in [k for k in self._sessions if k[:2] == (tenant, user_id)]:
            del self._sessions[key]


class VectorCache:
    """Vectors of texts embedded lately, so a text is embedded once however many
    uses it has: a chat turn's query is its user memory's text, and the write
    that follows the answer finds the vector here. Bounded LRU of float32 arrays
    (1.5 KiB each at 384 dimensions); a miss only costs an embedding."""

    def __init__(self, max_texts: int = 4096) -> None:
        self._vectors: OrderedDict[bytes, array[float]] = OrderedDict()
        self._max_texts = max_texts

    @staticmethod
    def _key(text: str) -> bytes:  # a digest, so long texts cost no memory here
        return blake2b(text.encode(), digest_size=16).digest()

    def get(self, text: str) -> list[float] | None:
        key = self._key(text)
        vector = self._vectors.get(key)
        if vector is None:
            return None
        self._vectors.move_to_end(key)
        return vector.tolist()

    def put(self, text: str, vector: Sequence[float]) -> None:
        key = self._key(text)
        self._vectors[key] = array("f", vector)
        self._vectors.move_to_end(key)
        while len(self._vectors) > self._max_texts:
            self._vectors.popitem(last=False)

    def clear(self) -> None:
        self._vectors.clear()
