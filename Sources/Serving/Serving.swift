/// The HTTP recommendation service: Hummingbird 2 routes over a shared, hot-reloaded model.
