"""dashpipe: pipelines for live dashboards as streaming dataflow on a Kafka log."""

__version__ = "0.1.0"
