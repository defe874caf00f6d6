"""The re-evaluation's bookkeeping (store/reevaluation.py): when a book registers, when a
pass starts, and what a finished pass lets go. Pure: no Redis."""

from __future__ import annotations

from atp_service.domain import ChannelPolicy
from atp_service.store import PolicyBook
from atp_service.store.reevaluation import Plan, advance, finish, minds_the_day, script_books

DAY = 86_400_000
T0 = 20_000 * DAY + 3_600_000  # an hour into day 20000
PLAIN = PolicyBook.of({"web": ChannelPolicy()}).lua_json
HALF = PolicyBook.of({"web": ChannelPolicy(share=50)}).lua_json
HORIZON = PolicyBook.of(
    {"web": ChannelPolicy(include_in_transit=True, in_transit_horizon_days=7)}
).lua_json


def fresh(book: str = PLAIN) -> tuple[Plan, dict[int, str]]:
    return Plan(epoch="e", generation=1, base=1), {1: book}


def test_a_dataset_whose_book_cannot_move_with_the_day_needs_no_first_pass() -> None:
    plan, books = fresh()
    assert advance(plan, books, PLAIN, now_ms=T0) is None
    assert plan.current is None and plan.done == (1, 20_000)
    assert not minds_the_day(PLAIN) and minds_the_day(HORIZON)


def test_a_first_start_with_a_horizon_evaluates_everything_once() -> None:
    plan, books = fresh(HORIZON)
    advance(plan, books, HORIZON, now_ms=T0)
    assert plan.current is not None and plan.current.target == 1


def test_a_new_book_registers_once_it_settled_and_then_a_pass_starts() -> None:
    plan, books = fresh()
    advance(plan, books, PLAIN, now_ms=T0)
    assert advance(plan, books, HALF, now_ms=T0 + 10, settle_ms=3_000) is None
    assert plan.pending is not None and plan.current is None
    assert advance(plan, books, HALF, now_ms=T0 + 2_000, settle_ms=3_000) is None
    assert advance(plan, books, HALF, now_ms=T0 + 3_010, settle_ms=3_000) == 2
    assert books[2] == HALF and plan.current is not None and plan.current.target == 2


def test_a_book_that_changes_again_settles_from_its_last_change() -> None:
    plan, books = fresh()
    advance(plan, books, HALF, now_ms=T0, settle_ms=3_000)
    other = PolicyBook.of({"web": ChannelPolicy(share=10)}).lua_json
    advance(plan, books, other, now_ms=T0 + 2_900, settle_ms=3_000)
    assert advance(plan, books, other, now_ms=T0 + 3_100, settle_ms=3_000) is None
    assert advance(plan, books, other, now_ms=T0 + 5_900, settle_ms=3_000) == 2
    assert books[2] == other


def test_a_change_undone_before_it_settled_is_forgotten() -> None:
    plan, books = fresh()
    advance(plan, books, PLAIN, now_ms=T0)
    advance(plan, books, HALF, now_ms=T0, settle_ms=3_000)
    advance(plan, books, PLAIN, now_ms=T0 + 1_000, settle_ms=3_000)
    assert plan.pending is None and plan.current is None and plan.generation == 1


def test_a_change_during_a_pass_makes_it_go_on_with_the_new_target_and_end_unclean() -> None:
    plan, books = fresh()
    advance(plan, books, HALF, now_ms=T0, settle_ms=0)
    advance(plan, books, HALF, now_ms=T0 + 1, settle_ms=0)
    assert plan.current is not None and plan.current.target == 2
    other = PolicyBook.of({"web": ChannelPolicy(share=10)}).lua_json
    advance(plan, books, other, now_ms=T0 + 2, settle_ms=0)
    advance(plan, books, other, now_ms=T0 + 3, settle_ms=0)
    assert plan.generation == 3 and not plan.current.clean
    assert finish(plan, books) == []  # not clean: nothing let go, another pass follows
    advance(plan, books, other, now_ms=T0 + 4, settle_ms=0)
    assert plan.current is not None and plan.current.target == 3
    assert finish(plan, books) == [1, 2]
    assert (plan.base, plan.done, set(books)) == (3, (3, 20_000), {3})


def test_a_new_day_starts_a_pass_only_where_a_horizon_makes_it_matter() -> None:
    plan, books = fresh()
    advance(plan, books, PLAIN, now_ms=T0)
    advance(plan, books, PLAIN, now_ms=T0 + DAY)
    assert plan.current is None and plan.done == (1, 20_001)
    plan, books = fresh(HORIZON)
    advance(plan, books, HORIZON, now_ms=T0)
    finish(plan, books)
    advance(plan, books, HORIZON, now_ms=T0 + DAY)
    assert plan.current is not None and plan.current.day == 20_001


def test_a_pass_that_saw_midnight_is_followed_by_another() -> None:
    plan, books = fresh(HORIZON)
    advance(plan, books, HORIZON, now_ms=T0)
    advance(plan, books, HORIZON, now_ms=T0 + DAY)
    assert plan.current is not None and not plan.current.clean


def test_while_a_pass_runs_the_generations_are_bounded() -> None:
    plan, books = fresh()
    advance(plan, books, HALF, now_ms=T0, settle_ms=0)
    advance(plan, books, HALF, now_ms=T0, settle_ms=0)
    for share in range(1, 20):
        book = PolicyBook.of({"web": ChannelPolicy(share=share)}).lua_json
        advance(plan, books, book, now_ms=T0 + share, settle_ms=0, max_generations=4)
        advance(plan, books, book, now_ms=T0 + share, settle_ms=0, max_generations=4)
    assert len(books) == 4 and plan.pending is not None  # the latest waits for the pass


def test_the_state_survives_its_json_and_the_books_go_to_the_script_as_stored() -> None:
    plan, books = fresh()
    advance(plan, books, HALF, now_ms=T0, settle_ms=0)
    advance(plan, books, HALF, now_ms=T0, settle_ms=0)
    assert plan.current is not None
    plan.current.cursors["redis"] = 42
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert (
        script_books(plan, books) == f'{{"base":1,"target":2,"books":{{"1":{PLAIN},"2":{HALF}}}}}'
    )
