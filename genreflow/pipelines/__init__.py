"""Ray wiring of the pipeline stages: each module builds one stage's Ray graph from the
pure functions of the library. Jobs in ``jobs/`` and the CLI call these."""
