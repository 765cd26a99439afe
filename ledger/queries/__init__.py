"""L2 queries: plans, items, sessions, timelines, summaries; the truth snapshot."""
