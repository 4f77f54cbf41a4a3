"""Prometheus metrics of the trainer (served on ``CLAAS_METRICS_PORT``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

QUEUE_DEPTH = Gauge("claas_trainer_queue_depth", "Jobs waiting for the device.")
JOBS = Counter("claas_trainer_jobs_total", "Jobs that ended, by outcome.", ["outcome"])
PHASE_SECONDS = Histogram(
    "claas_trainer_job_phase_seconds",
    "Time a job spends in each phase: queue, fetch (adapter download and load), guided (sampling "
    "teacher-guided rollouts), greedy (the student's greedy answers), teacher, steps, guard (the commit guard), "
    "commit.",
    ["phase"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
TOKENS = Counter("claas_trainer_tokens_total", "Response tokens trained on (times steps).")
TOKENS_PER_SECOND = Gauge("claas_trainer_tokens_per_second", "Training throughput of the last job's steps.")
COMMIT_RETRIES = Counter(
    "claas_trainer_commit_retries_total", "Jobs re-run on a new head because another writer moved it."
)
GUARD_REJECTIONS = Counter(
    "claas_trainer_guard_rejections_total", "Trained versions the commit guard kept off the head (their jobs failed)."
)
