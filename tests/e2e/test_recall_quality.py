"""Recall finds a fact phrased differently from the question, among distractors,
through the real embedder and the hybrid (dense + BM25, session window) index."""

from __future__ import annotations

import httpx
import pytest

from gateway.memory.prompt import recall_query
from harness.process import Service

pytestmark = pytest.mark.e2e

CONVERSATION = [
    ("Caroline", "Hey Mel! How was your weekend?"),
    ("Melanie", "Great, we went camping by the lake with the kids."),
    ("Caroline", "That sounds lovely. I finally did it, I adopted a beagle!"),
    ("Melanie", "No way! What did you call him?"),
    ("Caroline", "Pepper. He already chewed one of my sneakers."),
    ("Melanie", "Ha! I started pottery classes on Tuesdays, by the way."),
    ("Caroline", "I have a job interview at the library next month."),
    ("Melanie", "Good luck! My daughter is learning the violin."),
]


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("What is the name of Caroline's dog?", "Pepper. He already chewed one of my sneakers."),
        (
            "Which pet did Caroline get?",
            "That sounds lovely. I finally did it, I adopted a beagle!",
        ),
        (
            "What creative hobby did Melanie take up?",
            "Ha! I started pottery classes on Tuesdays, by the way.",
        ),
    ],
)
def test_paraphrased_facts_are_recalled(
    stack_gateway: Service, user: str, question: str, expected: str
) -> None:
    for speaker, text in CONVERSATION:
        response = httpx.post(
            f"{stack_gateway.url}/memories",
            json={
                "user_id": user,
                "text": f"{speaker}: {text}",
                "session_id": "s1",
                "timestamp": "2023-05-08T13:56:00",
            },
        )
        assert response.status_code == 201
    hits = httpx.post(
        f"{stack_gateway.url}/memories/search",
        json={"user_id": user, "query": question, "top_k": 3},
    ).json()["results"]
    assert any(hit["memory"].endswith(expected) for hit in hits), [h["memory"] for h in hits]


def test_the_question_after_a_long_paste_reaches_the_embedder(embedder: Service) -> None:
    # The embedder reads a text's first 256 tokens: of a paste and a question
    # after it, recall used to embed the paste alone, so every question about
    # it recalled the same memories (the two vectors were equal).
    paste = "Here is my log: " + "ERROR disk quota exceeded on node-7. " * 45
    queries = [recall_query(f"{paste}\n\n{q}") for q in ("What pet do I have?", "Where do I live?")]
    response = httpx.post(f"{embedder.url}/embeddings", json={"input": queries}, timeout=30)
    first, second = (item["embedding"] for item in response.json()["data"])
    assert sum(a * b for a, b in zip(first, second, strict=True)) < 0.99
