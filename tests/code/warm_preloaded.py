"""A module of this checkout that tests/code/test_warm_python.py has a warm Python import, then edits."""
