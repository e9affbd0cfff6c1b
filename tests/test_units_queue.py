"""The job queue alone: admission limits, play order, SSIP priorities, keys, ends.

Pure bookkeeping, no I/O: each test is microseconds.
"""

from __future__ import annotations

import pytest

from ttsd.errors import Code
from ttsd.scheduler.events import Outcome, Rejection
from ttsd.scheduler.jobs import Chunk, Job, JobKind, JobState, Priority
from ttsd.scheduler.queue import REASON_PRIORITY, REASON_REPLACED, JobQueue, Limits


def job(queue: JobQueue, priority: str = "message", client: str = "a", **kwargs) -> Job:
    return Job(
        id=queue.new_id(),
        client=client,
        text="Words.",
        chunks=[Chunk(0, "Words.", 0, 6)],
        priority=Priority(priority),
        **kwargs,
    )


def admit(queue: JobQueue, priority: str = "message", **kwargs):
    new = job(queue, priority, **kwargs)
    queue.check_room(new.client, new.kind)
    admission = queue.admit(new)
    for other, _ in admission.displaced:
        queue.end(other, Outcome.ABORTED)
    if admission.postponed is not None:
        queue.postpone(admission.postponed)
    if admission.dropped:
        queue.end(new, Outcome.ABORTED)
    return new, admission


def order(queue: JobQueue) -> list[int]:
    return [j.id for j in queue.speaking_jobs()]


def test_jobs_play_in_arrival_order_and_positions_count_the_playing_job() -> None:
    queue = JobQueue()
    first, _ = admit(queue)
    second, _ = admit(queue)
    assert queue.position(first) == 1 and queue.position(second) == 2
    assert queue.take_turn() is first and first.state is JobState.PLAYING
    assert queue.take_turn() is None  # the speaker is busy
    third, _ = admit(queue)
    assert queue.position(third) == 3
    assert queue.end(first, Outcome.FINISHED)
    assert queue.take_turn() is second


def test_limits_total_per_client_and_for_synthesis() -> None:
    queue = JobQueue(Limits(max_queue=3, max_queue_per_client=2, max_synthesize_per_client=1))
    admit(queue, client="a")
    admit(queue, client="a")
    with pytest.raises(Rejection) as exc:
        queue.check_room("a", JobKind.SPEAK)
    assert exc.value.code is Code.CLIENT_QUEUE_FULL
    admit(queue, client="b")
    with pytest.raises(Rejection) as exc:
        queue.check_room("c", JobKind.SPEAK)
    assert exc.value.code is Code.QUEUE_FULL
    synthesis = job(queue, client="a", kind=JobKind.SYNTHESIZE)
    queue.check_room("a", JobKind.SYNTHESIZE)  # synthesis has its own limit
    queue.admit(synthesis)
    assert synthesis.state is JobState.MAKING and synthesis not in queue.waiting
    with pytest.raises(Rejection) as exc:
        queue.check_room("a", JobKind.SYNTHESIZE)
    assert exc.value.code is Code.CLIENT_QUEUE_FULL


def test_end_is_the_only_terminal_transition_and_happens_once() -> None:
    queue = JobQueue()
    one, _ = admit(queue)
    assert queue.end(one, Outcome.ABORTED)
    assert one.state is JobState.ABORTED and one.cancel.cancelled
    assert not queue.end(one, Outcome.FINISHED)  # second end: refused
    assert one.state is JobState.ABORTED and queue.find(one.id) is None
    assert queue.was_issued(one.id) and not queue.was_issued(99)


def test_important_goes_first_and_interrupts_a_message() -> None:
    queue = JobQueue()
    playing, _ = admit(queue)
    queue.take_turn()
    waiting, _ = admit(queue)
    urgent, admission = admit(queue, "important")
    assert admission.displaced == [(playing, REASON_PRIORITY)]
    assert order(queue) == [urgent.id, waiting.id]  # the waiting message is postponed


def test_important_with_resume_postpones_the_interrupted_job_to_play_next() -> None:
    queue = JobQueue()
    playing, _ = admit(queue, "message")
    queue.take_turn()
    later, _ = admit(queue, "message")
    urgent, admission = admit(queue, "important", resume_interrupted=True)
    assert admission.postponed is playing and admission.displaced == []
    # The interrupted job waits behind the important one, first among its priority.
    assert order(queue) == [urgent.id, playing.id, later.id]
    assert playing.state is JobState.QUEUED


def test_important_never_interrupts_important() -> None:
    queue = JobQueue()
    first, _ = admit(queue, "important")
    queue.take_turn()
    second, admission = admit(queue, "important")
    assert admission.displaced == [] and admission.postponed is None
    assert order(queue) == [first.id, second.id]


def test_message_cancels_text_and_notification_but_waits_for_message() -> None:
    queue = JobQueue()
    text, _ = admit(queue, "text")
    queue.take_turn()
    waiting_text, _ = admit(queue, "text")  # (text interrupts itself: ends the first)
    assert text.state is JobState.ABORTED
    queue.take_turn()
    message, admission = admit(queue, "message")
    assert {j.id for j, _ in admission.displaced} == {waiting_text.id}
    second, admission = admit(queue, "message")
    assert admission.displaced == []
    assert order(queue) == [message.id, second.id]


def test_text_waits_for_messages_and_interrupts_older_text() -> None:
    queue = JobQueue()
    message, _ = admit(queue, "message")
    old_text, _ = admit(queue, "text")
    new_text, admission = admit(queue, "text")
    assert admission.displaced == [(old_text, REASON_PRIORITY)]
    assert order(queue) == [message.id, new_text.id]


def test_notification_is_dropped_under_anything_else_and_interrupts_itself() -> None:
    queue = JobQueue()
    first, _ = admit(queue, "notification")
    queue.take_turn()
    second, admission = admit(queue, "notification")
    assert admission.displaced == [(first, REASON_PRIORITY)] and not admission.dropped
    queue.take_turn()
    admit(queue, "text")  # cancels the playing notification
    assert second.state is JobState.ABORTED
    third, admission = admit(queue, "notification")
    assert admission.dropped and third.state is JobState.ABORTED


def test_progress_keeps_only_the_latest_waiting_report_and_never_interrupts() -> None:
    queue = JobQueue()
    message, _ = admit(queue, "message")
    queue.take_turn()
    p1, _ = admit(queue, "progress")
    p2, admission = admit(queue, "progress")
    assert admission.displaced == [(p1, REASON_REPLACED)]
    after, _ = admit(queue, "message")  # messages do not cancel progress
    assert order(queue) == [message.id, after.id, p2.id]
    assert message.state is JobState.PLAYING


def test_important_puts_a_playing_progress_report_back_unless_a_newer_one_waits() -> None:
    queue = JobQueue()
    report, _ = admit(queue, "progress")
    queue.take_turn()
    urgent, admission = admit(queue, "important")
    assert admission.postponed is report
    assert order(queue) == [urgent.id, report.id]
    queue.take_turn()
    queue.end(urgent, Outcome.FINISHED)
    queue.take_turn()  # the report plays again
    newer, _ = admit(queue, "progress")
    _, admission = admit(queue, "important")
    assert admission.displaced == [(report, REASON_REPLACED)]
    assert newer.state is JobState.QUEUED


def test_a_key_replaces_a_waiting_job_of_any_priority_but_not_a_playing_one() -> None:
    queue = JobQueue()
    playing, _ = admit(queue, key="build")
    queue.take_turn()
    waiting, _ = admit(queue, "text", key="build")
    newest, admission = admit(queue, "message", key="build")
    assert (waiting, REASON_REPLACED) in admission.displaced
    assert playing.state is JobState.PLAYING
    assert order(queue) == [playing.id, newest.id]


def test_selection_by_client_and_all() -> None:
    queue = JobQueue()
    a1, _ = admit(queue, client="a")
    b1, _ = admit(queue, client="b")
    synthesis = job(queue, client="a", kind=JobKind.SYNTHESIZE)
    queue.admit(synthesis)
    assert queue.of_client("a") == [a1, synthesis]
    assert queue.all_jobs() == [a1, b1, synthesis]
    assert queue.find(b1.id) is b1
