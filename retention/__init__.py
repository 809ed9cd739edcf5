"""Retention: tier transitions, deletions and legal holds (`aitrail retention plan|apply`).

Not built yet: this package holds the capability's place in the layout (DESIGN.md)."""
