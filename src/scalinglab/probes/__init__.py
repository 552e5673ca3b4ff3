"""Probes of storage vs structure: memorisation capacity, sample-specific memorisation,
grokking, facts vs rules, repeated data. `probes.common` holds the machinery they share."""
