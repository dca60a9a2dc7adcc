"""Local development and test servers: venue simulators, the load generator, a tansu Kafka
broker and an embedded PostgreSQL. The demo, the tests and the benchmarks start them; the
engine never imports them (tests/unit/test_layers.py checks)."""
