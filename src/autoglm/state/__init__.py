"""State shared by every gateway process and replica: Redis when ``redis_url`` is set."""
