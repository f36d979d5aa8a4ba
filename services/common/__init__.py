"""What every Lucid service shares: app factory, errors, health, database engines, peer calls."""
