"""Local development tooling, kept apart from the shared contracts: the one-machine stack
(`python -m moodloop.local.stack`) and the local S3 server (SeaweedFS)."""
