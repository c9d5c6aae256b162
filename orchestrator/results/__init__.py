"""A sweep's results: the rows it records (rows.py), the one store that writes and reads them
(store.py). Everything that writes or reads results goes through this package."""
