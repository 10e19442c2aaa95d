"""Several Live Loop nodes sharing one queue, its rooms and the relay through Valkey or
Redis (``LIVELOOP_REDIS_URL``). Nothing here is imported unless that is set; coredis
is imported only when a node starts. docs/cluster.md describes the design."""
