"""Jobs, the queue, the generation worker and the player."""

from ttsd.scheduler.jobs import Job, JobState
from ttsd.scheduler.scheduler import Scheduler

__all__ = ["Job", "JobState", "Scheduler"]
