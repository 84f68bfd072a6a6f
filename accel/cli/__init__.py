"""The ``accel`` command: the click group, ``check-config``, ``demo`` and ``cache``."""
