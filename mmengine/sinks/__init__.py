"""Writer threads that deliver Prices beyond the process (Kafka, Postgres) and the durable
spool they share. Each writer is one thread owning its sockets, its spool and its client."""
