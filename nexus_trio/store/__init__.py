"""Where keys and usage outlive the process (`nexus_trio.store.base.Store`)."""
