"""`bon bench`: Best-of-N latency of bon against what a user would otherwise run (transformers by hand, vLLM's
own server with n=N), throughput under concurrency and the server's memory, on one machine in one run."""
