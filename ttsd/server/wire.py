"""The scheduler's domain events as protocol messages: the one place they are mapped."""

from __future__ import annotations

from ttsd import protocol
from ttsd.scheduler.events import (
    AudioChanged,
    EngineChanged,
    Event,
    JobContinued,
    JobEnded,
    JobPostponed,
    JobQueued,
    JobStarted,
    Outcome,
    SentenceStarted,
    SpeakerPaused,
    SpeakerResumed,
)
from ttsd.scheduler.jobs import Priority


def message_of(event: Event) -> protocol.Message:
    """The message every client receives for ``event`` (events carry no ``id``)."""
    match event:
        case JobQueued(job=job, position=position):
            priority = None if job.priority is Priority.MESSAGE else job.priority.value
            return protocol.Queued(
                job=job.id, position=position, client=job.client, priority=priority
            )
        case JobStarted(job=job):
            return protocol.Started(job=job.id, client=job.client)
        case SentenceStarted(job=job, index=index, start=start, end=end):
            return protocol.Sentence(
                job=job.id, index=index, start=start, end=end, client=job.client
            )
        case JobPostponed(job=job, by=by, chunk=chunk, start=start):
            return protocol.Postponed(
                job=job.id, by=by, index=chunk, start=start, client=job.client
            )
        case JobContinued(job=job, chunk=chunk, start=start):
            return protocol.Continued(job=job.id, index=chunk, start=start, client=job.client)
        case JobEnded():
            return _ended(event)
        case SpeakerPaused(job=job):
            return protocol.Paused(job=job.id if job else None)
        case SpeakerResumed(job=job):
            return protocol.Resumed(job=job.id if job else None)
        case EngineChanged(info=info):
            return protocol.EngineState(info=info)
        case AudioChanged(info=info):
            return protocol.AudioState(info=info)
    raise TypeError(f"no message for {event!r}")


def _ended(event: JobEnded) -> protocol.Message:
    job = event.job
    elapsed = round((job.ended or job.created) - job.created, 3)
    audio_seconds = round(event.audio_seconds, 3)
    if event.outcome is Outcome.FINISHED:
        return protocol.Finished(
            job=job.id,
            audio_seconds=audio_seconds,
            spoken_chars=event.spoken_chars,
            underruns=job.underruns,
            elapsed=elapsed,
            client=job.client,
        )
    if event.outcome is Outcome.ABORTED:
        return protocol.Aborted(
            job=job.id,
            reason=event.reason,
            by=event.by,
            audio_seconds=audio_seconds,
            spoken_chars=event.spoken_chars,
            elapsed=elapsed,
            client=job.client,
        )
    assert event.code is not None
    return protocol.JobError(
        job=job.id,
        code=event.code.value,
        message=event.message,
        audio_seconds=audio_seconds,
        spoken_chars=event.spoken_chars,
        elapsed=elapsed,
        client=job.client,
    )
