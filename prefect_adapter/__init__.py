"""The Prefect adapter: what Parley asks of Prefect, outside ``parley/`` (which never imports
Prefect) and outside ``tasks/`` (which holds the ``@task`` wrappers only).

* ``composition`` — the one composition root: settings, the database (its URL from the
  ``parley-db`` block, kept for Prefect outages), channels and the per-process ``Runtime``, for
  the worker, the dispatcher and the webhook;
* ``runs`` — run control: starting, resuming and rescheduling conversation flow runs;
* ``repairs`` — the dispatcher's repair policy (what each conversation is owed, read from its row);
* ``outreach_tick`` — the dispatcher's outreach half; ``concurrency_slots`` — each identity's
  Prefect global concurrency slot;
* ``artifacts`` — the conversation's page in the Prefect UI; ``resume_form`` — what a
  suspended run accepts when resumed (the Resume dialog's task form);
* ``client`` — one Prefect API client per process, waiting for the API; ``outages`` — riding
  out database and Prefect outages inside a run.
"""
