"""Operating the running engine: thread supervision, the status snapshot `mmengine top`
reads, the Prometheus endpoint. They read the runtime through a reporting protocol
(`mmengine.ops.status.Reporting`), never `Engine` itself."""
