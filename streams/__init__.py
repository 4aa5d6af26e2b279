"""Stream processors on the log: the mapping compiler, the mapper, replay."""
