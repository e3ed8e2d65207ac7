"""Several processes, one study: the shared storage and its lock, who runs what, the local launcher."""
