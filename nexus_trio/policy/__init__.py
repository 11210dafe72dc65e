"""Who may use the fleet and how much: keys, limits, budgets, privacy, the queue."""
