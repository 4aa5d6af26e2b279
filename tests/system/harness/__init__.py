"""The chaos harness: the whole Procfile shape (two processes of every role) on a stack of its
own (three Kafka brokers, PostgreSQL), with a webhook load, a polled API, a sink receiver and a
nemesis; `run.run_chaos` runs it and checks what was acknowledged against what was stored and
delivered."""
