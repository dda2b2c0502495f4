"""The membership core's counters and refusal reports (`membership._stats`), without a network:
the published names and their order, and the rate limit of `Rejected` reports."""

from __future__ import annotations

import random

from swimthor.config import profile
from swimthor.membership import STAT_NAMES, Membership, MembershipStats, Rejected, new_stats
from swimthor.membership._stats import REJECTED_EVERY, Rejections, seal_refusal

# What status() and the metrics have always published, in this order.
PUBLISHED = (
    "packets_in",
    "packets_out",
    "bytes_in",
    "bytes_out",
    "messages_in",
    "rejected_seal",
    "rejected_replay",
    "rejected_stale",
    "rejected_decode",
    "deaths_doubted",
    "rejected_incarnation",
    "unknown_messages",
    "misdirected",
    "pings_sent",
    "acks_received",
    "ping_reqs_sent",
    "nacks_received",
    "probes_failed",
    "suspicions",
    "confirmations",
    "refutations",
    "failures_declared",
    "push_pulls",
    "push_pull_failures",
    "queries",
    "conflicts",
    "suspect_checks",
    "stream_rejected",
    "repair_syncs",
    "final_checks",
    "reconnects",
    "isolations",
    "declared_alone",
    "alives_not_refuting",
    "silent_probes",
    "late_answers",
    "members_held",
)


def test_the_published_names_and_their_order_are_fixed() -> None:
    assert STAT_NAMES == PUBLISHED
    assert MembershipStats.__required_keys__ == frozenset(PUBLISHED)


def test_new_stats_is_a_plain_dict_of_zeros_with_exactly_those_keys() -> None:
    stats = new_stats()
    assert type(stats) is dict
    assert list(stats.items()) == [(k, 0) for k in PUBLISHED]
    stats["packets_in"] += 1
    assert stats["packets_in"] == 1
    assert new_stats()["packets_in"] == 0  # each core its own


def test_a_core_publishes_its_counters_by_name_in_order() -> None:
    core = Membership(name="a", addr=("10.0.0.1", 1), config=profile("local"),
                      rng=random.Random(1), now=0.0)  # fmt: skip
    assert tuple(core.stats) == PUBLISHED
    core.receive_datagram(b"garbage", ("10.0.0.2", 2), 0.0)
    published = core.status(0.0)["stats"]
    assert tuple(published) == PUBLISHED
    assert published["packets_in"] == 1 and published["bytes_in"] == len(b"garbage")
    assert published is not core.stats  # a copy


def test_seal_refusals_count_under_their_kind() -> None:
    assert seal_refusal("replay") == ("rejected_replay", "replay")
    assert seal_refusal("stale") == ("rejected_stale", "stale")
    assert seal_refusal("seal") == ("rejected_seal", "unsealed")
    assert seal_refusal("label") == ("rejected_seal", "label")


def test_rejections_are_reported_at_most_every_period_per_reason() -> None:
    r = Rejections()
    first = r.note("malformed", ("10.0.0.2", 1), "bad", 0.0)
    assert first == Rejected("malformed", 1, ("10.0.0.2", 1), "bad")
    # Within the period: counted, not reported; another reason is reported at once.
    assert r.note("malformed", ("10.0.0.2", 2), "worse", 1.0) is None
    assert r.note("malformed", ("10.0.0.2", 3), "worst", 2.0) is None
    assert r.note("unsealed", None, "plain", 2.0) == Rejected("unsealed", 1, None, "plain")
    # After it: one report with the count since the last one, and the last address/detail.
    later = r.note("malformed", ("10.0.0.2", 4), "x" * 300, REJECTED_EVERY)
    assert later == Rejected("malformed", 3, ("10.0.0.2", 4), "x" * 200)
    assert r.note("malformed", None, "again", REJECTED_EVERY + 1.0) is None
