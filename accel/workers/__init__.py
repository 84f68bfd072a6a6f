"""Worker processes: a supervisor that opens every listener and keeps N workers accepting on those sockets,
replaced when they die, renewed on SIGHUP and stopped on SIGTERM; and the worker side that adopts them."""
