"""Data in and out of the stages: jsonl files (jsonl.py), content hashes (digest.py), text keys
(text.py), near-duplicate detection (dedup.py), the n-gram contamination gate
(contamination.py), problem sets from outside the project (evalsets.py), and Orca-Math's
preference pairs and KTO table from judged samples (preferences.py).

May import: tutorloop.errors, secrets, config. Nothing that loads a model.
"""
