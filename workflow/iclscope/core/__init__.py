"""The core every layer stands on: validated config and settings, architectures, job keys and plans,
tables, activation files, write-then-rename, resume states, logs, statistics, timing. No torch model code.
"""
