"""Which topics a demo run deletes: earlier runs' (``demo-HHMMSS-xxxx.``), never the last one's."""

from __future__ import annotations

from router_stream.demo import earlier_run_topics


def test_earlier_runs_are_picked_and_the_last_run_is_kept():
    topics = ["demo-101010-ab12.signals", "demo-101010-ab12.routed.slack",
              "demo-111111-cd34.signals", "demo-121212-ef56.router.dlq"]
    assert earlier_run_topics(topics, keep="demo-111111-cd34.") == [
        "demo-101010-ab12.routed.slack", "demo-101010-ab12.signals",
        "demo-121212-ef56.router.dlq"]


def test_without_a_recorded_last_run_every_demo_topic_goes():
    assert earlier_run_topics(["demo-101010-ab12.signals"], keep=None) == [
        "demo-101010-ab12.signals"]


def test_topics_that_only_look_alike_stay():
    lookalikes = ["signals", "demo.signals", "demo-abc.signals", "mydemo-101010-ab12.signals",
                  "demo-101010-ab12", "demo-101010-AB12.signals", "demo-1010-ab12.signals",
                  "sim-101010-ab12.signals", "t-demo-101010-ab12.signals"]
    assert earlier_run_topics(lookalikes, keep=None) == []
