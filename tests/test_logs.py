"""One log line per request: what happened, never what was said."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from nexus_trio.config import TRACE, LoggingSettings
from nexus_trio.logs import JsonFormatter, RequestLine, configure_logging

from helpers import sim

PROMPT = "purple elephants juggle quietly"


async def test_one_line_per_request_without_prompt_text(
    start_nexus: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    a, b = sim("a"), sim("b")
    nexus = await start_nexus(
        [a, b], routing={"strategy": "priority"}, backend_options={"b": {"priority": 2}}
    )
    a.faults.status = 500
    body = {"model": "llama3:8b", "messages": [{"role": "user", "content": PROMPT}]}
    await nexus.http.post("/v1/chat/completions", json=body, headers={"x-request-id": "r-1"})
    await nexus.http.post("/v1/chat/completions", json={**body, "model": "missing"})
    await nexus.settled()

    lines = [r for r in caplog.records if r.name == "nexus.request"]
    assert len(lines) == 2
    assert isinstance(lines[0].msg, RequestLine)
    served = lines[0].msg.fields
    assert (served["request_id"], served["api"]) == ("r-1", "chat")
    assert (served["model"], served["served_model"], served["backend"]) == (
        "llama3:8b",
        "llama3:8b",
        "b",
    )
    assert (served["status"], served["stream"], served["attempts"], served["failovers"]) == (
        200,
        False,
        2,
        1,
    )
    assert served["latency_ms"] > 0
    assert "request_id=r-1" in lines[0].getMessage()
    assert lines[1].msg.fields["status"] == 404
    assert lines[1].msg.fields["error"] == "model_not_found"
    assert PROMPT not in caplog.text

    record = json.loads(JsonFormatter().format(lines[0]))
    assert record["message"] == "request"
    assert record["backend"] == "b"
    assert record["level"] == "info"
    assert record["route"] == served["route"]
    assert record["prompt_tokens"] > 0
    assert record["completion_tokens"] > 0
    assert "messages" not in record


async def test_content_is_logged_only_when_asked(
    start_nexus: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    a = sim("a")
    nexus = await start_nexus([a], logging={"content": True})
    body = {"model": "llama3:8b", "messages": [{"role": "user", "content": PROMPT}]}
    answer = (await nexus.http.post("/v1/chat/completions", json=body)).json()
    text = ""
    async with nexus.http.stream(
        "POST", "/v1/chat/completions", json={**body, "stream": True}
    ) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    text += choice["delta"].get("content") or ""
    await nexus.settled()
    plain, streamed = (r.msg.fields for r in caplog.records if r.name == "nexus.request")
    assert plain["messages"] == body["messages"]
    assert plain["answer"] == answer["choices"][0]["message"]["content"]
    assert streamed["answer"] == text
    assert PROMPT in JsonFormatter().format(caplog.records[-1])


def test_component_levels_set_each_loggers_level() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    names = ("nexus.request", "nexus.health", "httpx")
    try:
        configure_logging(
            LoggingSettings(
                level="info",
                component_levels={"request": "warning", "nexus.health": "DEBUG", "httpx": "error"},
            )
        )
        levels = [logging.getLogger(name).level for name in names]
        assert levels == [logging.WARNING, logging.DEBUG, logging.ERROR]
    finally:
        root.handlers[:], root.level = saved
        for name in names:
            logging.getLogger(name).setLevel(logging.NOTSET)


def test_trace_and_warn_are_applied(restore_logging: None) -> None:
    configure_logging(
        LoggingSettings(level="Trace", component_levels={"request": "WARN", "health": "trace"})
    )
    assert logging.getLogger().level == TRACE == 5
    assert logging.getLogger("nexus.request").level == logging.WARNING
    assert logging.getLogger("nexus.health").level == TRACE
    assert logging.getLogger("nexus.registry").isEnabledFor(TRACE)
    # A record at TRACE is named so in both formats.
    record = logging.makeLogRecord({"name": "nexus.health", "levelno": TRACE, "msg": "probe"})
    record.levelname = logging.getLevelName(TRACE)
    assert record.levelname == "TRACE"
    assert json.loads(JsonFormatter().format(record))["level"] == "trace"


def test_warn_from_the_schema_is_applied_as_warning(restore_logging: None) -> None:
    configure_logging(LoggingSettings(level="warn"))
    assert logging.getLogger().level == logging.WARNING


def test_a_level_that_is_no_level_name_says_which_are(restore_logging: None) -> None:
    before = logging.getLogger().handlers[:]
    with pytest.raises(ValueError, match=r"one of trace, debug, info, warning, error, critical"):
        configure_logging(LoggingSettings(component_levels={"health": "loud"}))
    assert logging.getLogger().handlers == before
