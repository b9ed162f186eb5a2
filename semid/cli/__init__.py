"""The `semid` command line."""
