"""What runs on a Ray worker: one DEFER trial (or pack) per Tune trial, reported milestone by milestone."""
