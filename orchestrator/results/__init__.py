"""A sweep's results: the rows it records (rows.py), the one store that writes and reads them
(store.py), and the queries the outputs read them through (query.py) with the rules they
follow: which rows rank (candidates.py), best and Pareto under constraints (ranking.py), the
search and confirm stages (stages.py), a recorded trial's threshold curve (curve.py).
Everything that writes or reads results goes through this package; it imports only protocol,
storage, spec and defer_core."""
