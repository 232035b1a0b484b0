"""The pytest guard's example suites: each is run by tests/test_guard_*.py in its own pytest process
(its own rootdir and pytest.ini), never collected by this project's run."""

collect_ignore_glob = ["*"]
