"""Jobs from text to sound: the queue, the engine host, the player, and their wiring.

* :mod:`.queue`: pure bookkeeping of jobs (admission, priorities, play order, ends);
* :mod:`.engine_host`: the engine on its worker thread (state, calls, unload);
* :mod:`.generator`: makes the jobs' audio ahead of playback and feeds the player;
* :mod:`.player`: playback of one job at a time on an audio output, audio health;
* :mod:`.pacing`: when playback may start without running dry;
* :mod:`.cache`: audio of phrases said before (instant phrases);
* :mod:`.chunking`: a job's text as the chunks the engine makes one at a time;
* :mod:`.scheduler`: the thin wiring, and the API the server uses.

Nothing here builds protocol messages: the scheduler emits :mod:`.events` and raises
:class:`.events.Rejection`.
"""

from ttsd.scheduler.engine_host import EngineHost, EngineState
from ttsd.scheduler.events import Event, Outcome, Rejection
from ttsd.scheduler.jobs import Chunk, Job, JobKind, JobState, Priority
from ttsd.scheduler.queue import Limits
from ttsd.scheduler.scheduler import Order, Scheduler, Settings

__all__ = [
    "Chunk",
    "EngineHost",
    "EngineState",
    "Event",
    "Job",
    "JobKind",
    "JobState",
    "Limits",
    "Order",
    "Outcome",
    "Priority",
    "Rejection",
    "Scheduler",
    "Settings",
]
