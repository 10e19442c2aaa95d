"""``liveloop bench``: relay, churn and idle load scenarios (see :mod:`.cli`)."""
