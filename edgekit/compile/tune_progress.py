"""Progress lines, the time budget and the first errors of a tuning run (MetaSchedule only logs them).

The time budget has to reach into MetaSchedule's loop in two places.  Its gradient scheduler
first builds one batch of every task and joins (measures, records) none of them before the
last is built: on MobileNetV3-Small's 50 kernels that round took longer than a 10-minute
budget, and a budget checked only when measurements come back never fired.  So past the
deadline the builder hands batches back unbuilt (marked ``SKIPPED``, at once, and hidden from
the database, the cost model and the counts), and the measure callback leaves the loop only
once every batch that was really built has been joined, so no measurement is lost.
"""

from __future__ import annotations

import time


class OutOfTime(Exception):
    """Raised from the measure callback to leave MetaSchedule's loop when the time budget is spent."""


SKIPPED = "edgekit: not built, the tuning time budget was spent"


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
        self.batches_built = 0  # batches really built (the first always is, whatever the budget)
        self.batches_joined = 0  # of those, how many came back through the measure callback
        self.inner_callbacks: list = []

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def skipping(self) -> bool:
        """Batches are handed back unbuilt: the budget is spent and the first batch was built."""
        return bool(self.batches_built) and self.past_deadline()

    def builder(self, inner):
        """``inner`` (a MetaSchedule Builder) that stops building once the time budget is spent."""
        from tvm.s_tir.meta_schedule.builder import BuilderResult
        from tvm.s_tir.meta_schedule.builder.builder import _PyBuilder

        def build(inputs):
            if self.skipping():
                return [BuilderResult(None, SKIPPED) for _ in inputs]
            self.batches_built += 1
            return inner.build(inputs)

        return _PyBuilder(build)

    def callback(self, inner_callbacks):
        """One measure callback: ``inner_callbacks`` (MetaSchedule's) on the built candidates, then this monitor."""
        from tvm.s_tir.meta_schedule.measure_callback.measure_callback import _PyMeasureCallback

        self.inner_callbacks = list(inner_callbacks)
        return _PyMeasureCallback(self.join)

    def join(self, scheduler, task_id, candidates, builder_results, runner_results) -> None:
        """A batch came back from the runner (MetaSchedule's JoinRunningTask)."""
        keep = [i for i, built in enumerate(builder_results) if str(built.error_msg or "") != SKIPPED]
        if keep:
            self.batches_joined += 1
            picked = [[items[i] for i in keep] for items in (candidates, builder_results, runner_results)]
            for inner in self.inner_callbacks:
                inner.apply(scheduler, task_id, *picked)
            self.apply(scheduler, task_id, *picked)
        if self.past_deadline() and self.batches_joined >= self.batches_built:
            self.stop()

    def stop(self) -> None:
        if not self.out_of_time:
            self.out_of_time = True
            self.say("  time budget reached: stopping (every measured record is already in the database)")
        # The scheduler has no "stop" call (terminating its tasks from here trips its own checks),
        # so leave its loop by an exception; run_search recognises it.
        raise OutOfTime()

    def sent(self, count: int, task: str) -> None:
        if self.skipping():
            return  # handed back unbuilt (see Monitor.builder)
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

