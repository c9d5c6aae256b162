"""The driver: preflight checks, then a Ray Tune run with the searcher, scheduler, worker and sinks."""
