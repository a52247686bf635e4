"""Contact import: real platform exports in, one code path for the admin, the Celery
task and ``manage.py import_contacts``. See jobs.py for the flow."""

from audience.importing.jobs import (
    Preview,
    clean_mapping,
    clean_options,
    inspect,
    job_create,
    job_preview,
    job_requeue,
    job_sample,
    job_start,
    jobs_resume_stalled,
    run_job,
)
from audience.importing.profiles import TARGETS
from audience.importing.reading import ImportFileError
from audience.importing.upsert import NEW_STATUS_CHOICES

__all__ = [
    "NEW_STATUS_CHOICES",
    "TARGETS",
    "ImportFileError",
    "Preview",
    "clean_mapping",
    "clean_options",
    "inspect",
    "job_create",
    "job_preview",
    "job_requeue",
    "job_sample",
    "job_start",
    "jobs_resume_stalled",
    "run_job",
]
