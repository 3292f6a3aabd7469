"""The shared core: the contracts, settings and helpers every stage meets through. It imports no
stage and no front door (import-linter's layers contract); a stage's own helper lives in that stage."""
