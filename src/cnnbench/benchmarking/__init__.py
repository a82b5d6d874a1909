"""Benchmarks of search strategies: tabular studies (``tabulate``) and their replay
(``compare``)."""
