"""Progress lines, the time budget and the first errors of a tuning run (MetaSchedule only logs them)."""

from __future__ import annotations

import time


class OutOfTime(Exception):
    """Raised from the measure callback to leave MetaSchedule's loop when the time budget is spent."""


class Monitor:
    """Progress lines, the time budget, and the first errors (MetaSchedule only logs them)."""

    def __init__(self, budget: int, time_budget_s: float | None, say, names):
        self.budget = budget
        self.deadline = time.monotonic() + time_budget_s if time_budget_s else None
        self.say = say
        self.names = names
        self.started = time.monotonic()
        self.measured = 0
        self.ok = 0
        self.errors: list[str] = []
        self.best_us: dict[int, float] = {}
        self.trials_by_task: dict[int, int] = {}  # task index -> candidates measured in this run
        self.out_of_time = False

    def sent(self, count: int, task: str) -> None:
        self.sent_total = getattr(self, "sent_total", 0) + count
        self.say(f"  [{time.monotonic() - self.started:6.0f} s] building {count} candidates for {task[:48]} "
                 f"({self.sent_total}/{self.budget} sent, {self.measured} measured)")

    def apply(self, scheduler, task_id, candidates, builder_results, runner_results) -> None:
        for built, ran in zip(builder_results, runner_results):
            self.measured += 1
            self.trials_by_task[task_id] = self.trials_by_task.get(task_id, 0) + 1
            error = built.error_msg or ran.error_msg
            if error:
                text = str(error).strip().splitlines()
                line = next((l for l in reversed(text) if l.strip()), str(error))[:400]
                if line not in self.errors and len(self.errors) < 20:
                    self.errors.append(line)
                continue
            self.ok += 1
            us = sum(float(s) for s in ran.run_secs) / len(ran.run_secs) * 1e6
            self.best_us[task_id] = min(us, self.best_us.get(task_id, us))
        elapsed = time.monotonic() - self.started
        best = self.best_us.get(task_id)
        self.say(f"  [{elapsed:6.0f} s] trial {self.measured}/{self.budget} ({self.ok} ok)  "
                 f"{self.names[task_id][:48]:48s} best {best:.1f} us" if best is not None else
                 f"  [{elapsed:6.0f} s] trial {self.measured}/{self.budget} ({self.ok} ok)  "
                 f"{self.names[task_id][:48]:48s} no valid candidate yet")
        if self.deadline is not None and time.monotonic() >= self.deadline and not self.out_of_time:
            self.out_of_time = True
            self.say("  time budget reached: stopping (every measured record is already in the database)")
            # The scheduler has no "stop" call (terminating its tasks from here trips its own checks),
            # so leave its loop by an exception; run_search recognises it.
            raise OutOfTime()




class quiet_metaschedule:
    """MetaSchedule prints its whole task table after every batch: keep that in the log files.

    Its console handler takes the level the package logger has when the tuning contexts are
    made, so WARNING is set just for that moment (``-v`` keeps everything); the files in the
    database's logs/ folder still get every line.
    """

    def __enter__(self):
        import logging

        self.logger = logging.getLogger("tvm.s_tir.meta_schedule")
        self.level = self.logger.level
        if not logging.getLogger("edgekit").isEnabledFor(logging.DEBUG):
            self.logger.setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)
        return False


class progress_lines:
    """Turns the scheduler's "Sending N sample(s) to builder" log lines into edgekit progress lines.

    Added after the contexts are made: MetaSchedule's logging setup (dictConfig) replaces the
    package logger's handlers.
    """

    def __init__(self, monitor):
        import logging
        import re

        monitor_ref = monitor

        class Handler(logging.Handler):
            task = "?"

            def emit(self, record):
                message = record.getMessage()
                picked = re.search(r"TaskScheduler picks Task #\d+: (\S+)", message)
                if picked:
                    self.task = picked.group(1)
                sending = re.search(r"Sending (\d+) sample\(s\) to builder", message)
                if sending:
                    monitor_ref.sent(int(sending.group(1)), self.task)

        self.handler = Handler(logging.INFO)
        self.logger = logging.getLogger("tvm.s_tir.meta_schedule")

    def __enter__(self):
        import logging

        self.level = self.logger.level
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)
        return False

